"""Regularisers (gansweep.extend.regulariser) in the one iteration: terms added to one
player's cost, each reading the inputs its parameters name, weighted per trial.

A unit's regularisers are those with a weight above 0 in some member (Spec.regularisers);
each member's weights are a (R, P, 1) column of Hyper (0 where a member leaves it off). The
inputs are made only when a regulariser asks for them, in float32 outside autocast (an input
gradient is differentiated again), with the trial axis P first: a regulariser written for a
lone trial (P = 1) works in a pack unchanged when it reduces over the samples' axes only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import Tensor

from gansweep.config.names import REGULARISERS

Inputs = Mapping[str, Callable[[], object]]  # input name -> a thunk that makes it


@dataclass(frozen=True)
class Regulariser:
    name: str
    player: str  # d or g
    code: Callable[..., Tensor]
    inputs: tuple[str, ...]  # the parameters it reads (extend.REGULARISER_INPUTS)


def regulariser(name: str) -> Regulariser:
    entry = REGULARISERS.get(name)
    return Regulariser(name, entry.meta["player"], entry.code, tuple(entry.meta["inputs"]))


def per_trial(value: Tensor, trials: int, name: str) -> Tensor:
    """A regulariser's value as a (P, 1) column: (P,), (P, 1), or a scalar for P = 1."""
    if value.dim() == 0 and trials == 1:
        return value.reshape(1, 1)
    if value.dim() == 1 and value.shape[0] == trials:
        return value.unsqueeze(1)
    if value.shape == (trials, 1):
        return value
    raise ValueError(f"regulariser {name!r} must give one value per trial, shape ({trials},), got {tuple(value.shape)}")


def penalty(terms: tuple[tuple[int, Regulariser], ...], weights: Tensor, inputs: Inputs, trials: int) -> Tensor:
    """(P, 1) sum of weight x value over `terms` ((index in Spec.regularisers, regulariser));
    weights: Hyper.reg_weights, (R, P, 1)."""
    total = None
    for index, reg in terms:
        value = per_trial(reg.code(**{name: inputs[name]() for name in reg.inputs}).float(), trials, reg.name)
        term = weights[index] * value
        total = term if total is None else total + term
    assert total is not None, "penalty is called only for a player with regularisers"
    return total


def step_inputs(d_call: Callable[[Tensor], Tensor], input_grad: Callable[[Callable[[Tensor], Tensor], Tensor], Tensor],
                real: Tensor, fake: Tensor, real_logits: Tensor | None, fake_logits: Tensor) -> Inputs:
    """What a regulariser may read in one player's step (extend.REGULARISER_INPUTS), each
    made when asked: D as a function, its input gradient (iteration.Autodiff.input_grad:
    autograd eager, torch.func compiled), the samples and their logits (G's step has no D
    pass on the real samples: their logits are D's call, made if asked)."""
    return {
        "real": lambda: real,
        "fake": lambda: fake,
        "real_logits": lambda: d_call(real) if real_logits is None else real_logits.float(),
        "fake_logits": lambda: fake_logits.float(),
        "d": lambda: d_call,
        "d_grad": lambda: (lambda x: input_grad(lambda y: d_call(y).sum(), x)),
    }

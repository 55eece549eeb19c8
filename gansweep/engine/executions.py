"""The executions of iteration.iteration: how the networks are called, how gradients are
taken, whether the whole iteration is one torch.compile graph. Each returns a `Step`,
(state, draws, hyper) -> (state, stats), and none holds any maths of its own.

- eager, P = 1: the trial's own modules, their parameters views of the state's flat rows
  (state.alias_module), gradients by autograd of the module's parameters, the update written
  back into the rows in place. The fewest ops: the default for short trials.
- packed, P > 1: one module structure called under torch.func.vmap over the P rows
  (randomness="different": each trial its own dropout masks), gradients by autograd on the
  stacked rows (each trial's loss depends on its own row only, so the gradient of their sum
  is each trial's own).
- compiled (compile: true), any P: the same iteration through torch.func (functional_call,
  grad) traced by torch.compile into one graph; hyperparameters are tensor inputs, so every
  trial with the same Spec and networks shares it (one compile per process and key).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from gansweep.engine.iteration import (
    ADAM_EPS,
    UPDATES,
    Draws,
    Hyper,
    Nets,
    NetState,
    Objective,
    Spec,
    TrainState,
    iteration,
)
from gansweep.engine.stacked import stacked_forward
from gansweep.engine.state import Layout

Step = Callable[[TrainState, Draws, Hyper], tuple[TrainState, Tensor]]
# How many graphs one code object may hold before dynamo silently falls back to eager (its
# default is 8): a long-lived actor of a sweep over shapes or losses can need more.
RECOMPILE_LIMIT = 64


# ---------------------------------------------------------------------------- autodiff


class ModuleAutograd:
    """Gradients of the modules' own parameters (eager, P = 1), as a list per parameter
    (what FusedUpdate takes), or as one flat (1, N) row with `flat` (what UPDATES take)."""

    def __init__(self, params_of: dict[int, list[Tensor]], flat: bool = False) -> None:
        self.params_of = params_of  # id(flat row tensor) -> the module parameters viewing it
        self.flat = flat

    def grad(self, objective: Objective, params: Tensor, buffers: object) -> tuple[Tensor, object]:
        loss, aux = objective(params, buffers)
        grads = torch.autograd.grad(loss, self.params_of[id(params)])
        if self.flat:
            return torch.cat([g.reshape(-1) for g in grads]).unsqueeze(0), aux
        return grads, aux  # type: ignore[return-value]

    def input_grad(self, scalar_of: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        # an x in a graph (G's samples, for a G regulariser) stays in it: the gradient flows back
        x = x if x.requires_grad else x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(scalar_of(x), x, create_graph=True)
        return grad

    def tracked(self, params: Tensor) -> Tensor:
        # the flat row only holds the values: the graph runs through the module's parameters
        return torch.cat([p.reshape(-1) for p in self.params_of[id(params)]]).unsqueeze(0)


class LeafAutograd(ModuleAutograd):
    """Gradients of the stacked rows themselves (packs, eager)."""

    def __init__(self) -> None:
        super().__init__({})

    def grad(self, objective: Objective, params: Tensor, buffers: object) -> tuple[Tensor, object]:
        leaf = params.detach().requires_grad_(True)
        loss, aux = objective(leaf, buffers)
        (grad,) = torch.autograd.grad(loss, leaf)
        return grad, aux

    def tracked(self, params: Tensor) -> Tensor:
        return params  # the leaf itself


class FuncAutodiff:
    """torch.func's transforms: what torch.compile traces into one graph."""

    def grad(self, objective: Objective, params: Tensor, buffers: object) -> tuple[Tensor, object]:
        # buffers an input, not a capture: the forwards may update them in place
        return torch.func.grad(objective, argnums=0, has_aux=True)(params, buffers)

    def input_grad(self, scalar_of: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        return torch.func.grad(scalar_of)(x)

    def tracked(self, params: Tensor) -> Tensor:
        return params


# ---------------------------------------------------------------------------- networks


def features_of(discriminator: nn.Module, feature_end: int) -> nn.Module:
    """D's first layers, up to its features (Spec.feature_end; 0: none asked, all of D):
    the same layer objects, under the same names."""
    return discriminator[:feature_end] if feature_end else discriminator


def module_nets(generator: nn.Module, discriminator: nn.Module, feature_end: int = 0) -> Nets:
    """The modules called directly on trial 0's inputs (their tensors alias the state)."""

    def call(module: nn.Module, params: Tensor, buffers: tuple[Tensor, ...], x: Tensor, *counts: Tensor) -> Tensor:
        del params, buffers  # the module's own tensors are views of them
        if counts:
            return module(x[0], *(c[0] for c in counts)).unsqueeze(0)
        return module(x[0]).unsqueeze(0)

    features = features_of(discriminator, feature_end)
    return Nets(partial(call, generator), partial(call, discriminator), partial(call, features))


def functional_nets(generator: nn.Module, discriminator: nn.Module, layouts: tuple[Layout, Layout], vectorised: bool,
                    feature_end: int = 0) -> Nets:
    """The modules called with the state's tensors: for P trials as batched matrix products
    where the network is a Sequential of linear and element-wise layers (stacked.py), else
    its structure under vmap over the trials (functional_call); on row 0 when not
    `vectorised`. D's features: the first feature_end layers of D's structure."""
    forwards = []
    d_structure = copy.deepcopy(discriminator)
    structures = (copy.deepcopy(generator), d_structure, features_of(d_structure, feature_end))
    for structure, layout in zip(structures, (*layouts, layouts[1]), strict=True):
        stacked = stacked_forward(structure, layout) if vectorised else None
        if stacked is not None:
            forwards.append(stacked)
            continue
        names = set(dict(structure.named_parameters())) | set(dict(structure.named_buffers()))

        def one_trial(params: Tensor, buffers: tuple[Tensor, ...], x: Tensor, *counts: Tensor,
                      structure: nn.Module = structure, layout: Layout = layout, names: set[str] = names) -> Tensor:
            tensors = layout.unflatten(params)  # params (N,), x (B, ...), counts (B,): D's minibatch layer's
            tensors.update(zip(layout.buffer_names, buffers, strict=True))
            if len(names) < len(tensors):  # D's first layers: only theirs
                tensors = {n: t for n, t in tensors.items() if n in names}
            return functional_call(structure, tensors, (x, *counts), tie_weights=False)

        if vectorised:
            batch_norm_in_float32(structure)
            forwards.append(vmap(one_trial, randomness="different"))
        else:

            def row0(params: Tensor, buffers: tuple[Tensor, ...], x: Tensor, *counts: Tensor,
                     one_trial: Callable[..., Tensor] = one_trial) -> Tensor:
                return one_trial(params[0], tuple(b[0] for b in buffers), x[0], *(c[0] for c in counts)).unsqueeze(0)

            forwards.append(row0)
    return Nets(*forwards)


def batch_norm_in_float32(structure: nn.Module) -> None:
    """Batch norm fed float32 under vmap: vmap's batch norm refuses a bf16 input (autocast's
    convolution output) beside float32 statistics, which the unbatched CPU kernel accepts and
    computes in float32 anyway; the next layer casts back under autocast."""
    for module in structure.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.register_forward_pre_hook(lambda _module, args: (args[0].float(), *args[1:]))


# ---------------------------------------------------------------------------- steps


def in_place(update: Callable[[NetState, Tensor, Tensor, Hyper], NetState]) -> Callable[[NetState, Tensor, Tensor, Hyper], NetState]:
    """`update`, its result written into the state's own tensors (which the eager modules
    view): the same numbers, the same tensors."""

    @torch.no_grad()
    def write_back(net: NetState, grad: Tensor, lr: Tensor, hyper: Hyper) -> NetState:
        new = update(net, grad, lr, hyper)
        for old, value in ((net.params, new.params), (net.moment1, new.moment1),
                           (net.moment2, new.moment2), (net.steps, new.steps)):
            old.copy_(value)
        return net

    return write_back


class FusedUpdate:
    """The eager execution's form of UPDATES[optimizer]: torch.optim's own fused kernel
    (_fused_adam_, _fused_sgd_: one call for all of a network's parameters) on the module's
    parameters and on views of the state's moments, in place. The same update, in fewer ops
    (a dozen per parameter tensor fewer); tests/engine/test_engine.py holds it to adam_update and
    sgd_update. Its settings are the kernels' Python floats: eager_step's FloatHyper makes
    them so once per epoch (float() of a one-element tensor works too, with a host sync)."""

    def __init__(self, optimizer: str, params_of: dict[int, list[Tensor]], layouts: dict[int, Layout]) -> None:
        self.optimizer = optimizer
        self.params_of = params_of
        self.layouts = layouts  # id(flat row) -> its network's layout
        self.views: dict[int, tuple[list[Tensor], list[Tensor], list[Tensor]]] = {}
        self.no_grad = torch.no_grad()

    def moments(self, net: NetState) -> tuple[list[Tensor], list[Tensor], list[Tensor]]:
        key = id(net.params)
        if key not in self.views:
            layout = self.layouts[key]
            first = list(layout.unflatten(net.moment1[0]).values())
            second = list(layout.unflatten(net.moment2[0]).values()) if net.moment2.shape[1] else []
            self.views[key] = (first, second, [net.steps.view(())] * len(first))
        return self.views[key]

    def __call__(self, net: NetState, grads: Tensor, lr: Tensor | float, hyper: Hyper) -> NetState:
        with self.no_grad:  # one context kept, not a decorator's new one per call
            return self.update(net, grads, float(lr), hyper)

    def update(self, net: NetState, grads: Tensor, lr: float, hyper: Hyper) -> NetState:
        params = self.params_of[id(net.params)]
        first, second, steps = self.moments(net)
        net.steps.add_(1)
        if self.optimizer == "adam":
            torch._fused_adam_(
                params, list(grads), first, second, [], steps, lr=lr, beta1=float(hyper.beta1),
                beta2=float(hyper.beta2), weight_decay=0.0, eps=ADAM_EPS, amsgrad=False, maximize=False,
            )
        else:  # zero-started buffers: momentum * 0 + grad is torch's first-step buffer
            torch._fused_sgd_(
                params, list(grads), first, weight_decay=0.0, momentum=float(hyper.momentum), lr=lr,
                dampening=0.0, nesterov=False, maximize=False, is_first_step=False,
            )
        return net


def eager_step(spec: Spec, generator: nn.Module, discriminator: nn.Module, state: TrainState,
               layouts: tuple[Layout, Layout], fused: bool = True) -> Step:
    """P = 1 on the trial's own modules, which state.alias_module has made views of `state`;
    `fused`: torch's fused kernels for the update (else UPDATES' own, written back)."""
    params_of = {
        id(state.g.params): [p for p in generator.parameters() if p.requires_grad],
        id(state.d.params): [p for p in discriminator.parameters() if p.requires_grad],
    }
    nets = module_nets(generator, discriminator, spec.feature_end)
    fused = fused and state.g.params.device.type in ("cpu", "cuda")
    if fused:
        by_id = {id(state.g.params): layouts[0], id(state.d.params): layouts[1]}
        update = FusedUpdate(spec.optimizer, params_of, by_id)
    else:
        update = in_place(UPDATES[spec.optimizer])
    one_iteration = partial(iteration, spec, nets, ModuleAutograd(params_of, flat=not fused), update=update)
    as_floats = FloatHyper()

    def step(state: TrainState, draws: Draws, hyper: Hyper) -> tuple[TrainState, Tensor]:
        return one_iteration(state, draws, as_floats(hyper))

    return step


class FloatHyper:
    """A lone trial's Hyper with its (1, 1) columns as Python floats (iteration.Hyper says
    why), converted once per Hyper, i.e. per epoch; loss_masks stay tensors."""

    def __init__(self) -> None:
        self.last: tuple[Hyper | None, Hyper | None] = (None, None)

    def __call__(self, hyper: Hyper) -> Hyper:
        if self.last[0] is not hyper:  # the Hyper itself is kept: a new one may reuse an id
            floats = {name: float(value) for name, value in hyper._asdict().items()
                      if name not in ("loss_masks", "reg_weights") and isinstance(value, Tensor)}
            self.last = (hyper, hyper._replace(**floats))
        return self.last[1]  # type: ignore[return-value]


def packed_step(spec: Spec, generator: nn.Module, discriminator: nn.Module, layouts: tuple[Layout, Layout]) -> Step:
    nets = functional_nets(generator, discriminator, layouts, vectorised=True, feature_end=spec.feature_end)
    return partial(iteration, spec, nets, LeafAutograd())


@dataclass(frozen=True)
class GraphKey:
    """Everything a compiled iteration's code depends on that is not a tensor input."""

    spec: Spec
    generator: str  # repr of the network: its layers, their sizes and constants
    discriminator: str
    vectorised: bool
    # the modules of the losses' and regularisers' code: a plugin's carries its file's hash,
    # so an edited plugin compiles anew in a process that compiled the old one
    code: tuple[str, ...] = ()


COMPILED: dict[GraphKey, Step] = {}  # one compiled iteration per key in this process


def compiled_step(
    spec: Spec, generator: nn.Module, discriminator: nn.Module, layouts: tuple[Layout, Layout], *, vectorised: bool,
) -> Step:
    """The iteration as one graph; `vectorised`: the networks under vmap (compiled packs)."""
    code = tuple(t.d_real.__module__ for t in spec.terms) + tuple(
        r.code.__module__ for _, r in spec.d_regularisers + spec.g_regularisers)
    key = GraphKey(spec, repr(generator), repr(discriminator), vectorised=vectorised, code=code)
    if key not in COMPILED:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
        nets = functional_nets(generator, discriminator, layouts, vectorised=key.vectorised, feature_end=spec.feature_end)
        # The update written into the state's own tensors, as the eager execution does: the
        # functional one returned new parameter and moment rows every iteration, which made
        # the compiled mlp case (2 M parameters) 0.6x to 0.85x of the three loops' compiled
        # iteration (benchmarks/README.md, "The one iteration against the three").
        function = partial(iteration, spec, nets, FuncAutodiff(), update=in_place(UPDATES[spec.optimizer]))
        COMPILED[key] = torch.compile(function, fullgraph=True, dynamic=False)
    return COMPILED[key]

"""Extension points: one registry per kind of variant, filled by decorators.

A researcher adds a loss, a metric or an architecture in one Python file that a study names
(`plugins: [my_gan.py]`, relative to the study file):

    from gansweep.extend import loss, metric, architecture

    @loss("my_least_squares")
    class MyLeastSquares:
        def d_real(self, logits): return 0.5 * (logits - 1) ** 2     # per-sample, shape [batch]
        def d_fake(self, logits): return 0.5 * logits ** 2
        def g(self, logits):      return 0.5 * (logits - 1) ** 2

    @metric("radius_error", direction="minimize")
    def radius_error(generated, real): ...       # float tensors in the data's own space

    @architecture("my_mlp")
    def my_mlp(data_shape, noise_dim, trial): ...   # -> (generator, discriminator)

    @regulariser("my_r1", player="d")
    def my_r1(real, d_grad):                        # inputs by name, one value per trial
        return 0.5 * d_grad(real).flatten(2).pow(2).sum(2).mean(1)

The built-ins are entries of the same registries: their names (with a description and what
they need) are declared torch-free in gansweep.config.names, so that `gansweep validate`
needs no torch, and the engine's modules attach their code with these same decorators. The
study schema, `gansweep validate`, results.csv, MLflow and the report read the names from
here; an unknown name's error lists the valid ones.

This module imports nothing of gansweep's layers and nothing heavy: the config reads it, the
engine registers into it, and a plugin imports it.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, TypeVar

BUILT_IN = "built-in"
PLUGIN_MODULE_PREFIX = "gansweep_plugin_"  # config.plugins names each plugin file's module so
DIRECTIONS = ("maximize", "minimize")


class ExtensionError(ValueError):
    """A plugin's definition is refused (a name that collides, a bad argument)."""


class UnknownName(ValueError):
    """A name no registry entry has; the message lists the valid ones."""


@dataclass(frozen=True)
class Entry:
    """One variant: its name, a one-line description, what it needs and its code (None for a
    built-in whose engine module has not been imported: the config never needs the code)."""

    kind: str
    name: str
    description: str
    origin: str  # BUILT_IN, or the plugin file that defined it
    meta: Mapping[str, Any] = field(default_factory=dict)
    code: Any = None

    @property
    def built_in(self) -> bool:
        return self.origin == BUILT_IN


class Registry:
    """The entries of one kind (losses, metrics...), by name, in the order they were added."""

    def __init__(self, kind: str, plural: str) -> None:
        self.kind = kind
        self.plural = plural
        self._entries: dict[str, Entry] = {}

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def names(self, *, built_in: bool | None = None) -> tuple[str, ...]:
        """Every name (built_in None), or only the built-ins' (True) or the plugins' (False)."""
        return tuple(n for n, e in self._entries.items() if built_in is None or e.built_in == built_in)

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownName(self.unknown(name)) from None

    def unknown(self, name: object) -> str:
        """The message for a name that is not registered: it lists the valid ones."""
        if not self._entries:
            return f"unknown {self.kind} {name!r}: no {self.plural} are registered (a study's plugins register them)"
        return f"unknown {self.kind} {name!r}; valid: {', '.join(self._entries)}"

    def meta(self, name: str, key: str, default: Any = None) -> Any:
        return self.get(name).meta.get(key, default)

    def declare(self, name: str, description: str, **meta: Any) -> None:
        """A built-in's name, description and needs, before (and without) its code."""
        if name in self._entries:
            raise ExtensionError(f"the built-in {self.kind} {name!r} is declared twice")
        self._entries[name] = Entry(self.kind, name, description, BUILT_IN, MappingProxyType(dict(meta)))

    def add(self, name: str, code: Any, origin: str, description: str = "", **meta: Any) -> Any:
        """Register `code` under `name`: a built-in's code (its declaration's name, from a
        gansweep module) or a plugin's new entry. Returns `code` (decorators)."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ExtensionError(f"a {self.kind} name is a Python identifier, got {name!r} ({origin})")
        known = self._entries.get(name)
        if origin == BUILT_IN:
            if known is None or not known.built_in:
                raise ExtensionError(f"built-in {self.kind} {name!r} has no declaration in gansweep.config.names")
            self._entries[name] = Entry(self.kind, name, known.description, BUILT_IN,
                                        MappingProxyType({**known.meta, **meta}), code)
            return code
        if known is not None and known.built_in:
            raise ExtensionError(
                f"{origin}: {self.kind} {name!r} collides with the built-in {self.kind} of that name; "
                f"built-in {self.plural}: {', '.join(self.names(built_in=True))}"
            )
        if known is not None and known.origin != origin:
            raise ExtensionError(f"{origin}: {self.kind} {name!r} is already defined in {known.origin}")
        # the same file again (a study loaded twice, a worker's second unit): its newest code
        self._entries[name] = Entry(self.kind, name, description or _first_line(code), origin,
                                    MappingProxyType(dict(meta)), code)
        return code

    def drop_plugins(self) -> None:
        """Forget every plugin's entries (tests; a process that loads another study)."""
        self._entries = {n: e for n, e in self._entries.items() if e.built_in}


LOSSES = Registry("loss", "losses")
REGULARISERS = Registry("regulariser", "regularisers")
METRICS = Registry("metric", "metrics")
ARCHITECTURES = Registry("architecture", "architectures")
SAMPLERS = Registry("sampler", "samplers")
PRUNERS = Registry("pruner", "pruners")
SCHEDULERS = Registry("scheduler", "schedulers")
REGISTRIES = {r.kind: r for r in (LOSSES, REGULARISERS, METRICS, ARCHITECTURES, SAMPLERS, PRUNERS, SCHEDULERS)}

T = TypeVar("T")


def origin_of(code: Any) -> str:
    """BUILT_IN for gansweep's own modules, else the file the definition was written in."""
    module = getattr(code, "__module__", "") or ""
    if module == "gansweep" or module.startswith("gansweep."):
        return BUILT_IN
    source = getattr(sys.modules.get(module), "__file__", None)
    return str(source) if source else module or "<unknown>"


def _first_line(code: Any) -> str:
    doc = inspect.getdoc(code) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


LOSS_TERMS = ("d_real", "d_fake", "g")


def loss(name: str, description: str = "") -> Callable[[type[T]], type[T]]:
    """A class whose instances give the three per-sample costs of D's logits, each
    (..., batch) -> (..., batch): d_real (D's cost on a real sample), d_fake (D's cost on a
    generated one) and g (G's cost on a generated one). Optional: d_star(alpha, s) and
    g_star(alpha, s), the equilibrium losses (logged as d_loss_star / g_loss_star);
    `probabilistic = True` when D's output is a logit of a probability (D(x) is reported as
    its sigmoid); `smoothable = False` when one-sided label smoothing means nothing for it.
    Alpha, k, label smoothing (real target s: s d_real + (1 - s) d_fake) and packs apply to
    it as to every built-in."""

    def register(cls: type[T]) -> type[T]:
        if not inspect.isclass(cls):
            raise ExtensionError(f"@loss({name!r}) decorates a class, got {cls!r}")
        missing = [t for t in LOSS_TERMS if not callable(getattr(cls, t, None))]
        if missing:
            raise ExtensionError(f"{origin_of(cls)}: loss {name!r} lacks {', '.join(missing)} "
                                 f"(a loss is three per-sample costs: {', '.join(LOSS_TERMS)})")
        meta = {"smoothable": bool(getattr(cls, "smoothable", True)),
                "probabilistic": bool(getattr(cls, "probabilistic", False)),
                "equilibrium": callable(getattr(cls, "d_star", None)) and callable(getattr(cls, "g_star", None))}
        return LOSSES.add(name, cls, origin_of(cls), description, **({} if origin_of(cls) == BUILT_IN else meta))

    return register


def metric(name: str, direction: str, description: str = "") -> Callable[[Callable[..., float]], Callable[..., float]]:
    """A function (generated, real) -> float of an evaluation's samples and the real test
    rows, float tensors in the data's own space ([n, d] points or [n, c, h, w] images);
    `direction` (maximize or minimize) is what an objective on it aims for."""
    if direction not in DIRECTIONS:
        raise ExtensionError(f"metric {name!r}: direction must be one of {', '.join(DIRECTIONS)}, got {direction!r}")

    def register(function: Callable[..., float]) -> Callable[..., float]:
        if not callable(function):
            raise ExtensionError(f"@metric({name!r}) decorates a function, got {function!r}")
        meta = {"direction": direction, "reads": "samples", "cost": "plugin"}
        origin = origin_of(function)
        return METRICS.add(name, function, origin, description, **({} if origin == BUILT_IN else meta))

    return register


def architecture(name: str, description: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A function (data_shape, noise_dim, trial) -> (generator, discriminator): G maps
    (B, noise_dim) noise to (B, *data_shape) samples in the data's scale (images in [-1, 1]
    with a tanh output, or [0, 1] with g_output sigmoid), D maps (B, *data_shape) to (B,)
    raw logits (no sigmoid). Packs stack its networks with torch.func."""

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(function):
            raise ExtensionError(f"@architecture({name!r}) decorates a function, got {function!r}")
        return ARCHITECTURES.add(name, function, origin_of(function), description)

    return register


PLAYERS = ("d", "g")
# What a regulariser may read, by its parameters' names; tensors lead with the trial axis P
# (1 for a lone trial, the pack's size in a pack): engine/regularisers.py builds them.
REGULARISER_INPUTS = {
    "real": "(P, n_real, *shape) the real samples of the step (G's step: of the last D step)",
    "fake": "(P, n, *shape) generated samples (D's step: no gradient to G; G's step: G's own)",
    "real_logits": "(P, n_real) D's logits of `real`",
    "fake_logits": "(P, n) D's logits of `fake`",
    "d": "x (P, B, *shape) -> (P, B) D's logits, differentiable",
    "d_grad": "x (P, B, *shape) -> (P, B, *shape) the gradient of D's logits at x, differentiable",
}


def regulariser(name: str, player: str, description: str = "") -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A function whose value is added to one player's cost (player d or g), times the
    weight the trial gives it (`regularisers: {name: weight}`; 0 or absent: off). Its
    parameters name what it reads (REGULARISER_INPUTS); it returns one value per trial, (P,)
    or (P, 1). In every execution: eager, packed, compiled, compiled packs."""
    if player not in PLAYERS:
        raise ExtensionError(f"regulariser {name!r}: player must be one of {', '.join(PLAYERS)}, got {player!r}")

    def register(function: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(function):
            raise ExtensionError(f"@regulariser({name!r}) decorates a function, got {function!r}")
        inputs = tuple(inspect.signature(function).parameters)
        unknown = [i for i in inputs if i not in REGULARISER_INPUTS]
        if unknown or not inputs:
            raise ExtensionError(f"regulariser {name!r} reads {', '.join(unknown) or 'nothing'}; its parameters name "
                                 f"what it reads: {', '.join(REGULARISER_INPUTS)}")
        return REGULARISERS.add(name, function, origin_of(function), description, player=player, inputs=inputs)

    return register


"""Optuna: the study's sampler and pruner, the search space, and the study as source of truth.

Optuna decides (what to try next, whether to prune); Ray Tune executes. Ray's own
OptunaSearch builds its study with a no-op pruner, so gansweep drives Optuna directly with
ask/tell through `OptunaStudy`, shared by the Tune searcher and the pruning scheduler in
sweep.py. The Optuna storage (SQLite by default) records every trial's state, which is what
makes a killed sweep resumable without duplicates.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, Trial, TrialState

from gansweep import extend
from gansweep.config import names  # noqa: F401 (the built-ins' declarations, before their code)
from gansweep.config.schema import (
    Choice,
    FloatRange,
    IntRange,
    SearchParam,
    StudyConfig,
    TrialConfig,
)
from gansweep.config.space import decode_choice, encode_choice, resolve_values
from gansweep.errors import ConfigError
from gansweep.service.identity import ATTR_IDENTITY, check_identity
from gansweep.service.protocol import ATTR_EXCLUDED, ATTR_FAILURE_REASON


def quiet_optuna() -> None:
    """Optuna's INFO lines (one per trial) off, and its ExperimentalWarning: PatientPruner,
    GPSampler and friends are "experimental" in Optuna 5.0, and we pin the version. Called
    where a study's sampler and pruner are built (OptunaStudy.study, make_pruner), never at
    import."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class TuneGridSampler(optuna.samplers.GridSampler):
    """GridSampler stops `study.optimize` once the grid is covered, by calling study.stop(),
    which raises under ask/tell. Ray Tune's num_samples ends the sweep here instead."""

    def after_trial(self, study: optuna.Study, trial: FrozenTrial, state: TrialState, values: Any) -> None:
        pass


SAMPLERS: dict[str, Callable[[StudyConfig], optuna.samplers.BaseSampler]] = {
    "grid": lambda s: TuneGridSampler(grid_space(s), seed=s.sampler.seed),
    "random": lambda s: optuna.samplers.RandomSampler(seed=s.sampler.seed),
    "tpe": lambda s: optuna.samplers.TPESampler(
        seed=s.sampler.seed, n_startup_trials=max(2, min(10, (s.budget.trials or 10) // 3))
    ),
    "cmaes": lambda s: optuna.samplers.CmaEsSampler(seed=s.sampler.seed, warn_independent_sampling=False),
    "gp": lambda s: optuna.samplers.GPSampler(seed=s.sampler.seed),
    "nsga2": lambda s: optuna.samplers.NSGAIISampler(seed=s.sampler.seed),
}

PRUNERS: dict[str, Callable[[StudyConfig], optuna.pruners.BasePruner | None]] = {
    "none": lambda s: None,
    "median": lambda s: optuna.pruners.MedianPruner(
        n_startup_trials=s.pruner.startup_trials, n_warmup_steps=s.pruner.warmup_epochs
    ),
    "percentile": lambda s: optuna.pruners.PercentilePruner(
        s.pruner.percentile,
        n_startup_trials=s.pruner.startup_trials,
        n_warmup_steps=s.pruner.warmup_epochs,
    ),
    "successive_halving": lambda s: optuna.pruners.SuccessiveHalvingPruner(
        min_resource=s.pruner.min_resource, reduction_factor=s.pruner.reduction_factor
    ),
    "hyperband": lambda s: optuna.pruners.HyperbandPruner(
        min_resource=s.pruner.min_resource,
        max_resource=s.trial.epochs,
        reduction_factor=s.pruner.reduction_factor,
    ),
    # Optuna's paired test: the trial's reports against the best complete trial's at the same
    # steps. gansweep's steps are evaluation epochs and each report is the mean of the
    # configuration's replicates, so the pairs are epochs (not Optuna's intended problem
    # instances: the replicates train together as one pack, so none reports before the end).
    "wilcoxon": lambda s: optuna.pruners.WilcoxonPruner(
        p_threshold=s.pruner.p_threshold, n_startup_steps=max(s.pruner.warmup_epochs, 2)
    ),
}


# The code of the samplers and pruners gansweep.config.names declares (extend's registries).
for _registry, _makers in ((extend.SAMPLERS, SAMPLERS), (extend.PRUNERS, PRUNERS)):
    for _name, _make in _makers.items():
        _registry.add(_name, _make, extend.BUILT_IN)


def make_pruner(study: StudyConfig) -> optuna.pruners.BasePruner:
    quiet_optuna()  # PatientPruner is experimental
    pruner = extend.PRUNERS.get(study.pruner.name).code(study)
    if study.pruner.patience is not None:
        # PatientPruner waits `patience` reports without improvement before asking the
        # wrapped pruner (or, with none, prunes on the stall alone).
        return optuna.pruners.PatientPruner(pruner, patience=study.pruner.patience)
    return pruner or optuna.pruners.NopPruner()


def grid_space(study: StudyConfig) -> dict[str, list[Any]]:
    return {
        name: [encode_choice(v) for v in param.values]
        for name, param in study.search.items()
        if isinstance(param, Choice)
    }


def grid_size(study: StudyConfig) -> int:
    return math.prod(len(values) for values in grid_space(study).values())


def requested_trials(study: StudyConfig) -> int:
    if study.budget.trials is not None:
        return study.budget.trials
    return grid_size(study) if study.sampler.name == "grid" else 10


def suggest(trial: Trial, name: str, param: SearchParam) -> Any:
    if isinstance(param, Choice):
        encoded = trial.suggest_categorical(name, [encode_choice(v) for v in param.values])
        return decode_choice(param, encoded)
    if isinstance(param, IntRange):
        return trial.suggest_int(name, param.low, param.high, step=param.step, log=param.log)
    assert isinstance(param, FloatRange)
    return trial.suggest_float(
        name, param.low, param.high, step=param.step, log=param.kind == "log_uniform"
    )


def sample_trial_values(study: StudyConfig, trial: Trial) -> dict[str, Any]:
    """Define-by-run through the study's one resolver (study.resolve_values): each searched
    field is suggested after the fields its condition names, and only when it holds."""
    return resolve_values(study, lambda name, param: suggest(trial, name, param))


def values_from_params(study: StudyConfig, params: dict[str, Any]) -> dict[str, Any]:
    """The trial values of an Optuna trial that was asked earlier (e.g. before a crash)."""
    values = study.trial.model_dump()
    for name, value in params.items():
        param = study.search[name]
        values[name] = decode_choice(param, value) if isinstance(param, Choice) else value
    return values


FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


# The grid sampler's seed shuffles the grid once, and each stored trial's grid_id indexes
# that order (Optuna 5 hands out the first grid points by trial number): another seed in a
# later run would map those ids to other points and repeat them. It keeps the study's seed.
SEED_FIXES_THE_ORDER = ("grid",)


def continuing_seed(seed: int | None, trials_before: int, sampler: str = "random") -> int | None:
    """The sampler's seed for a run that finds `trials_before` trials already in the study.
    A seeded sampler draws the same stream each time it is built, so a resumed or extended
    study seeded as its first run would ask the first run's values again (a random sampler's,
    or TPE's start-up trials'). The first run keeps the study's seed (its trials reproduce
    as before); a later run seeds from (seed, trials_before), reproducible and its own."""
    if seed is None or trials_before == 0 or sampler in SEED_FIXES_THE_ORDER:
        return seed
    return int(np.random.SeedSequence([seed, trials_before]).generate_state(1)[0])


def with_sampler_seed(study: StudyConfig, seed: int | None) -> StudyConfig:
    return study.model_copy(update={"sampler": study.sampler.model_copy(update={"seed": seed})})


@dataclass
class OptunaStudy:
    """The Optuna side of a sweep: ask/tell, pruning decisions, trial bookkeeping.

    Picklable (Ray Tune saves its searcher): the optuna.Study is reopened from storage.

    One trial is read and written by its id through the storage (`frozen`, `set_attrs`):
    Optuna's study.trials reads every unfinished trial again on each call, which a sweep makes
    for every result; with packs, dozens of trials are unfinished at once."""

    config: StudyConfig
    storage_url: str
    _study: optuna.Study | None = field(default=None, repr=False)
    _storage: optuna.storages.RDBStorage | None = field(default=None, repr=False)
    _trial_ids: dict[int, int] = field(default_factory=dict, repr=False)  # number -> id: fixed
    allow_changed: bool = False  # `gansweep run --allow-changed`: a compatible change accepted

    def __getstate__(self) -> dict[str, Any]:
        return {"config": self.config, "storage_url": self.storage_url, "_study": None,
                "_storage": None, "_trial_ids": {}, "allow_changed": self.allow_changed}

    @property
    def storage(self) -> optuna.storages.RDBStorage:
        if self._storage is None:
            # Its calls ride out a database restart (optuna_storage.py); opening it waits
            # a few seconds at most, then names the storage that does not answer.
            # imported here: SQLAlchemy sets its logger's level when imported (no import side effects)
            from gansweep.service.optuna_storage import RetryingRDBStorage

            self._storage = RetryingRDBStorage(self.storage_url)
        return self._storage

    @property
    def study(self) -> optuna.Study:
        if self._study is None:
            quiet_optuna()
            directions = [self.config.objective.direction]
            if self.config.objective.second is not None:
                directions.append(self.config.objective.second.direction)
            seed = continuing_seed(self.config.sampler.seed, self.stored_trial_count(), self.config.sampler.name)
            self._study = optuna.create_study(
                study_name=self.config.name,
                storage=self.storage,  # the same backend as frozen() and set_attrs()
                sampler=extend.SAMPLERS.get(self.config.sampler.name).code(with_sampler_seed(self.config, seed)),
                pruner=make_pruner(self.config),
                directions=directions,
                load_if_exists=True,
            )
            self.hold_identity(self._study)
        return self._study

    def hold_identity(self, study: optuna.Study) -> None:
        """Refuse (ConfigError) a study that differs from the one stored; store its identity
        when new, or changed with --allow-changed (service/identity.py)."""
        stored_directions = [d.name.lower() for d in study.directions]
        try:
            identity = check_identity(study.user_attrs.get(ATTR_IDENTITY), self.config, stored_directions,
                                      self.allow_changed)
        except ConfigError:
            self._study = None  # a later access checks again
            raise
        if identity is not None:
            study.set_user_attr(ATTR_IDENTITY, identity)

    def stored_trial_count(self) -> int:
        """Trials the storage holds for this study already (0 for a new study)."""
        try:
            study_id = self.storage.get_study_id_from_name(self.config.name)
        except KeyError:
            return 0
        return len(self.storage.get_all_trials(study_id, deepcopy=False))

    @property
    def multi_objective(self) -> bool:
        return self.config.objective.second is not None

    def trials(self, states: tuple[TrialState, ...] | None = None) -> list[FrozenTrial]:
        return self.study.get_trials(deepcopy=False, states=states)

    def finished_count(self) -> int:
        """Trials that count towards the budget (invalid sampled combinations do not)."""
        return len(self.counted())

    def counted(self) -> list[FrozenTrial]:
        return [t for t in self.trials(FINISHED) if not t.user_attrs.get(ATTR_EXCLUDED)]

    def unfinished(self) -> list[FrozenTrial]:
        """Trials asked but never told: their sweep was interrupted. They are re-run."""
        return self.trials((TrialState.RUNNING,))

    def ask(self) -> tuple[int, dict[str, Any]]:
        """A new trial whose values form a valid TrialConfig. Invalid combinations (e.g. an
        alpha that leaves no real sample in a minibatch) are told FAIL and asked again."""
        for _ in range(100):
            trial = self.study.ask()
            values = sample_trial_values(self.config, trial)
            try:
                TrialConfig.model_validate(values)
            except ValueError as err:
                trial.set_user_attr(ATTR_FAILURE_REASON, f"invalid combination: {err}")
                trial.set_user_attr(ATTR_EXCLUDED, True)
                self.study.tell(trial, state=TrialState.FAIL)
                continue
            return trial.number, values
        raise RuntimeError("100 sampled combinations in a row were invalid; narrow the search")

    def values_of(self, number: int) -> dict[str, Any]:
        """Trial `number`'s values. An unfinished trial's are resolved again through the study's
        one resolver: a driver killed between Optuna's ask and the trial's suggestions leaves a
        RUNNING trial with some or none of its params, and reading only those gave the study's
        defaults instead (seen in CI: a killed alpha grid resumed with 0.5 twice, 0.7 never).
        Suggesting again returns the params already recorded and samples the missing ones
        as that trial would have (the grid sampler from the grid point given at ask)."""
        frozen = self.frozen(number)
        if frozen.state != TrialState.RUNNING:
            return values_from_params(self.config, frozen.params)
        return sample_trial_values(self.config, Trial(self.study, self.trial_id(number)))

    def trial_id(self, number: int) -> int:
        if number not in self._trial_ids:
            study_id = self.storage.get_study_id_from_name(self.config.name)
            self._trial_ids[number] = self.storage.get_trial_id_from_study_id_trial_number(study_id, number)
        return self._trial_ids[number]

    def frozen(self, number: int) -> FrozenTrial:
        """Trial `number` as the storage has it now."""
        _ = self.study  # created (or loaded) before its trials are read
        return self.storage.get_trial(self.trial_id(number))

    def report(self, number: int, value: float, epoch: int) -> bool:
        """Report an evaluation and return whether the pruner says stop."""
        if self.multi_objective:
            return False  # Optuna does not prune multi-objective studies
        trial = Trial(self.study, self.trial_id(number))
        if epoch in self.frozen(number).intermediate_values:
            return False  # a resumed trial re-reporting an epoch: the first report stands
        trial.report(value, epoch)
        return bool(trial.should_prune())

    def set_attrs(self, number: int, attrs: dict[str, Any]) -> None:
        trial_id = self.trial_id(number)
        for key, value in attrs.items():
            self.storage.set_trial_user_attr(trial_id, key, value)

    def tell(self, number: int, state: TrialState, values: list[float] | None = None) -> None:
        if self.frozen(number).state in FINISHED:
            return  # told already (a duplicate completion after a resume)
        self.study.tell(number, values=values, state=state)

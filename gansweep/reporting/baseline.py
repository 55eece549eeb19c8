"""The data-as-model Parzen baseline of a study's data sets: real training points scored as
if they were a model's samples, with the study's evaluation sizes (Theis et al. 2015: a
Parzen score means little alone). The one place of the reporting that needs the engine
(and torch), imported only when a score is not in the cache (report/baseline.json).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gansweep.config.datafile import DataFileProblem, inspect, is_built_in
from gansweep.config.names import QUALITY_METRICS, TOY_DATASETS
from gansweep.config.schema import TrialConfig
from gansweep.reporting.view import StudyView, first_line

# Quality metrics that read something the data as its own model does not have: no number is
# its baseline (a constant would pass for a measurement).
WITHOUT_BASELINE = {"d_auc": "the data as its own model has no discriminator to score it"}


def baseline_key(trial: TrialConfig) -> str:
    """What the data-as-model score depends on (a toy set's points and a file's splits
    depend on the seed; a file's score on its content, by hash, not on its path's name)."""
    own = not is_built_in(trial.dataset)
    return json.dumps({
        "dataset": _content_of(trial.dataset) if own else trial.dataset,
        "data_dir": trial.data_dir, "n_train": trial.n_train,
        "seed": trial.seed if own or trial.dataset in TOY_DATASETS else 0,
        "eval_samples": trial.eval_samples, "eval_valid": trial.eval_valid, "eval_test": trial.eval_test,
        "sigmas": list(trial.parzen_sigmas) if trial.parzen_sigmas else None,
    }, sort_keys=True)


def _content_of(path: str) -> str:
    """'sha256:<hex>' of a data file (datafile.inspect caches it); its path where the file
    cannot be read here (compute_baseline then notes why)."""
    try:
        return f"sha256:{inspect(path).digest}"
    except (DataFileProblem, OSError):
        return path


def _key_of(trial: TrialConfig, metric: str) -> str:
    """Parzen's key as before (old caches stay valid); a quality metric's adds it and its features."""
    if metric == "parzen_ll":
        return baseline_key(trial)
    return json.dumps({"base": baseline_key(trial), "metric": metric, "features": trial.features}, sort_keys=True)


def compute_baseline(trial: TrialConfig) -> dict[str, float]:
    """parzen.data_as_model_baseline with the study's evaluation sizes: eval_samples real
    training points as the kernel centres, scored like a trial's samples."""
    from gansweep.engine.data import load_dataset
    from gansweep.engine.parzen import data_as_model_baseline

    data = load_dataset(trial.dataset, data_dir=trial.data_dir, seed=trial.seed, device="auto", n_train=trial.n_train)
    test = data.test if trial.eval_test is None else data.test[: trial.eval_test]
    result = data_as_model_baseline(data.train, data.valid[: trial.eval_valid], test,
                                    trial.parzen_sigmas or data.default_sigmas, n_samples=trial.eval_samples)
    return {"dataset": trial.dataset, "mean": result.mean, "stderr": result.stderr, "sigma": result.sigma,
            "n_samples": result.n_samples, "n_test": result.n_test}


def compute_quality_baseline(trial: TrialConfig, metric: str) -> dict[str, float]:
    """A quality metric of the data as its own model (engine.scoring.data_as_model_scores):
    eval_samples real training points scored as a trial's samples."""
    from gansweep.engine.data import load_dataset
    from gansweep.engine.scoring import FEATURES, data_as_model_scores

    data = load_dataset(trial.dataset, data_dir=trial.data_dir, seed=trial.seed, device="auto", n_train=trial.n_train)
    scores = data_as_model_scores(trial, data, (metric,))
    return {"dataset": trial.dataset, "mean": float(scores[metric]), "features": scores[FEATURES]}  # type: ignore[dict-item]


def data_baselines(view: StudyView, cache: Path) -> dict[str, float]:
    """dataset -> data-as-model score of the objective (the mean over seeds of a toy set),
    cached: Parzen's, or a quality metric's (fid, kid near 0; c2st_accuracy near 0.5); none
    for a metric the data as a model cannot have (WITHOUT_BASELINE), with a note saying so."""
    quality = view.metric in QUALITY_METRICS
    if view.metric in WITHOUT_BASELINE:
        view.notes.append(f"Data-as-model {view.metric} baseline: n/a ({WITHOUT_BASELINE[view.metric]}).")
        return {}
    if view.metric != "parzen_ll" and not quality:
        view.notes.append(f"No data-as-model baseline: the objective is {view.metric}, not parzen_ll or a quality metric.")
        return {}
    configs = {_key_of(t.config, view.metric): t.config for t in view.trials if t.config is not None}
    if not configs:
        view.notes.append("No data-as-model baseline: the trials' fields are unknown (no MLflow params, no checkpoints).")
        return {}
    stored = json.loads(cache.read_text()) if cache.is_file() else {}
    scores: dict[str, list[float]] = {}
    for key, config in configs.items():
        if key not in stored:
            try:
                stored[key] = compute_quality_baseline(config, view.metric) if quality else compute_baseline(config)
            except Exception as err:  # data not on this machine, out of memory, ...
                view.notes.append(f"No data-as-model baseline for {config.dataset}: {first_line(err)}")
                continue
        scores.setdefault(config.dataset, []).append(stored[key]["mean"])
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(stored, indent=1, sort_keys=True))
    return {name: float(np.mean(values)) for name, values in scores.items()}

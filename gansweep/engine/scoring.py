"""A trial's sample-quality metrics at an evaluation (trial.metrics), and the same metrics of
the data as its own model (`gansweep baseline`, the report's reference lines).

Real rows: the test split (capped at eval_test) for the feature metrics, the validation
split (capped at eval_valid, never trained on) for D's AUC; generated rows: the evaluation's
samples. Every evaluation with a feature metric also returns `features`, the name of the
space it was computed in (engine/features.py), which metrics.csv and the MLflow run keep.
Wherever the loss has equilibrium values, each evaluation also gets the equilibrium verdict
(config.theory.equilibrium_verdict) and the checks it needs, asked for or not.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from gansweep.config.schema import TrialConfig
from gansweep.config.theory import BLIND as BLIND_VERDICT
from gansweep.config.theory import NO_VERDICT, NOT_APPLICABLE, equilibrium_verdict, has_equilibrium
from gansweep.engine.data import DATASETS
from gansweep.engine.dataset import Dataset, to_model_scale
from gansweep.engine.features import FeatureSpace, chunked, domain_model
from gansweep.engine.quality import C2ST_MIN_ROWS, PR_NEIGHBOURS, KidEstimate, c2st_accuracy, fid, kid, precision_recall, roc_auc
from gansweep.config.names import METRICS
from gansweep.extend import Entry

Scores = dict[str, float | str]
# The metrics computed from feature rows (config.names: reads features), in their declared order.
FEATURE_METRICS = tuple(n for n in METRICS.names(built_in=True) if METRICS.meta(n, "reads") == "features")
FEATURES = "features"  # the result key of the feature space's name
# the feature rows the metrics compared (c2st_accuracy cuts both to the smaller; kid draws subsets)
N_REAL, N_GENERATED = "n_real", "n_generated"
PR_K = "pr_k"  # precision's and recall's k (their k-NN manifolds' neighbour)
BLIND = "blind_discriminator"  # 1.0 where the verdict is blind, else 0.0
EQUILIBRIUM = "equilibrium"  # the result key of the verdict (text): config.theory.VERDICTS
D_LOGIT_STD = "d_logit_std"  # the spread of D's logits beside its AUC


def feature_space(kind: str, data: Dataset, data_dir: str | None = None) -> FeatureSpace:
    """The space a trial's metrics are computed in: a 2D set's points whatever `kind`, else
    the image set's domain classifier or Inception-v3 (kind: domain | inception)."""
    if not data.is_image:
        return FeatureSpace(f"points:{data.name}", lambda x: x.flatten(1))
    if kind == "inception":
        from gansweep.engine.inception import inception_space

        return inception_space(data.device, data.shape)
    if kind != "domain":
        raise ValueError(f"unknown feature space {kind!r}; valid: domain, inception")
    model = domain_model(data.name, data_dir)
    # a copy per device: the cached CPU network stays where it is
    network = model.network if data.device.type == "cpu" else copy.deepcopy(model.network).to(data.device)
    return FeatureSpace(model.name, chunked(network.features, data.shape))


def kid_scores(estimate: KidEstimate) -> Scores:
    """KID's record: its mean, its spread over subsets, and the subsets' size and number."""
    return {"kid": estimate.mean, "kid_std": estimate.std, "kid_subset_size": estimate.subset_size,
            "kid_subsets": estimate.subsets}


def real_test(trial: TrialConfig, data: Dataset) -> Tensor:
    return data.test if trial.eval_test is None else data.test[: trial.eval_test]


def feature_scores(trial: TrialConfig, data: Dataset, real: Tensor, fake: Tensor, seed: int) -> Scores:
    """The feature metrics of trial.metrics, of `fake` rows against `real` rows."""
    wanted = [m for m in FEATURE_METRICS if m in trial.metrics]
    if not wanted:
        return {}
    space = feature_space(trial.features, data, trial.data_dir)
    real_f, fake_f = space.embed(real), space.embed(fake)
    # the sizes beside the space: fid, precision and recall depend on them, not only on the model
    scores: Scores = {FEATURES: space.name, N_REAL: real_f.shape[0], N_GENERATED: fake_f.shape[0]}
    if "fid" in wanted:
        scores["fid"] = fid(real_f, fake_f)
    if "kid" in wanted:
        scores.update(kid_scores(kid(real_f, fake_f, seed=seed)))
    if "precision" in wanted or "recall" in wanted:
        precision, recall = precision_recall(real_f, fake_f, k=PR_NEIGHBOURS)
        scores.update({m: v for m, v in (("precision", precision), ("recall", recall)) if m in wanted})
        scores[PR_K] = PR_NEIGHBOURS
    if "c2st_accuracy" in wanted:
        scores["c2st_accuracy"] = c2st_accuracy(real_f, fake_f, seed=seed)
    for name in wanted:  # those with a function of the two sets alone (quality.feature_metric)
        code = METRICS.get(name).code
        if code is not None:
            scores[name] = code(real_f, fake_f)
    return scores


@torch.no_grad()
def discriminator_outputs(trial: TrialConfig, data: Dataset, discriminator: nn.Module, fake: Tensor) -> tuple[Tensor, Tensor]:
    """D's scores (logits) of held-out real and of generated rows, in eval mode (batch norm's
    running statistics, no dropout); inputs in the generator's scale, as D was trained."""
    real = data.valid[: trial.eval_valid]
    fake = fake[: max(real.shape[0], 1)].reshape(-1, *data.shape)
    was_training = discriminator.training
    discriminator.eval()
    try:
        real_scores, fake_scores = (discriminator(to_model_scale(trial, data, x)).float().flatten() for x in (real, fake))
    finally:
        discriminator.train(was_training)
    return real_scores, fake_scores


def discriminator_auc(trial: TrialConfig, data: Dataset, discriminator: nn.Module, fake: Tensor) -> float:
    """ROC AUC of D's scores, held-out real vs generated."""
    return roc_auc(*discriminator_outputs(trial, data, discriminator, fake))


def discriminator_checks(trial: TrialConfig, data: Dataset, discriminator: nn.Module, fake: Tensor) -> Scores:
    """D's AUC, and the spread of its logits over both sets: a D that outputs a constant has
    d_logit_std 0 whatever its AUC's ties make of it (THEORY.md section 6)."""
    real_scores, fake_scores = discriminator_outputs(trial, data, discriminator, fake)
    return {"d_auc": roc_auc(real_scores, fake_scores), D_LOGIT_STD: float(torch.cat((real_scores, fake_scores)).std())}


def wants_verdict(trial: TrialConfig) -> bool:
    """Whether the trial's evaluations get an equilibrium verdict: on unless the study turned
    it off, wherever the loss has equilibrium values."""
    return trial.equilibrium_check and has_equilibrium(trial.loss)


def needs_discriminator(trial: TrialConfig) -> bool:
    return "d_auc" in trial.metrics or wants_verdict(trial)


def quality_scores(
    trial: TrialConfig, data: Dataset, samples: Tensor, discriminator: nn.Module | None, epoch: int
) -> Scores:
    """trial.metrics of an evaluation's samples (data scale), and the equilibrium verdict's
    inputs where it wants one (C2ST in the trial's feature space, D's AUC and logit spread);
    {} when it needs none."""
    real = real_test(trial, data)
    scored = trial
    if wants_c2st_beside(trial, real, samples):
        # the verdict's C2ST in the rows feature_scores embeds anyway: each set embedded once
        scored = trial.model_copy(update={"metrics": (*trial.metrics, "c2st_accuracy")})
    scores = feature_scores(scored, data, real, samples, seed=trial.seed + epoch)
    if wants_verdict(trial) and "c2st_accuracy" not in scores:
        scores.update(verdict_c2st(trial, data, real, samples, seed=trial.seed + epoch))
    scores.update(plugin_scores(trial, data, real, samples))
    if needs_discriminator(trial):
        if discriminator is None:
            raise ValueError("d_auc and the equilibrium verdict need the trial's discriminator")
        scores.update(discriminator_checks(trial, data, discriminator, samples))
    return scores


def wants_c2st_beside(trial: TrialConfig, real: Tensor, samples: Tensor) -> bool:
    """Whether feature_scores should compute the verdict's C2ST with the feature metrics the
    trial asks for (not when it asks for none: verdict_c2st then picks the space itself)."""
    return (wants_verdict(trial) and "c2st_accuracy" not in trial.metrics
            and bool(set(trial.metrics) & set(FEATURE_METRICS))
            and min(real.shape[0], samples.shape[0]) >= C2ST_MIN_ROWS)


def verdict_c2st(trial: TrialConfig, data: Dataset, real: Tensor, samples: Tensor, seed: int) -> Scores:
    """The C2ST accuracy the verdict needs where trial.metrics does not ask for it: in the
    trial's feature space, or on the pixels of an image set of the researcher's own, which has
    no labels to train a domain classifier on. {} when either set is too small for the test
    (the verdict then says "no verdict" where the other checks cannot decide it)."""
    if min(real.shape[0], samples.shape[0]) < C2ST_MIN_ROWS:
        return {}
    if data.is_image and trial.features == "domain" and data.name not in DATASETS:
        space = FeatureSpace(f"pixels:{data.name}", lambda x: x.flatten(1))
    else:
        space = feature_space(trial.features, data, trial.data_dir)
    accuracy = c2st_accuracy(space.embed(real), space.embed(samples), seed=seed)
    return {"c2st_accuracy": accuracy, FEATURES: space.name}


def plugin_scores(trial: TrialConfig, data: Dataset, real: Tensor, samples: Tensor) -> Scores:
    """The plugin metrics trial.metrics names (gansweep.extend.metric): each a function of
    the samples and the real test rows, float tensors in the data's own space ([n, d] points
    or [n, c, h, w] images)."""
    wanted = [METRICS.get(name) for name in trial.metrics if not METRICS.get(name).built_in]
    if not wanted:
        return {}
    generated = samples.float().reshape(-1, *data.shape)
    held_out = real.float().reshape(-1, *data.shape)
    return {entry.name: _plugin_value(entry, generated, held_out) for entry in wanted}


def _plugin_value(entry: Entry, generated: Tensor, real: Tensor) -> float:
    value = entry.code(generated, real)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise TypeError(f"metric {entry.name!r} ({entry.origin}) must return a number, got {value!r}") from None


def verdict_columns(trial: TrialConfig, metrics: dict[str, float | str]) -> Scores:
    """An evaluation's equilibrium verdict (config.theory.equilibrium_verdict) and, where it
    decided one, the blind-discriminator flag (1.0 or 0.0, a number MLflow can chart)."""
    if "d_loss_star" not in metrics:
        return {EQUILIBRIUM: NOT_APPLICABLE}
    if not trial.equilibrium_check:
        return {EQUILIBRIUM: NO_VERDICT}
    verdict = equilibrium_verdict(metrics)  # type: ignore[arg-type]
    return {EQUILIBRIUM: verdict, BLIND: float(verdict == BLIND_VERDICT)}


def data_as_model_scores(trial: TrialConfig, data: Dataset, metrics: tuple[str, ...]) -> Scores:
    """The feature metrics of real training rows (eval_samples of them, a fixed subset) scored
    as a model's samples against the test split: what a perfect generator gets with these
    sizes (fid and kid near 0, c2st near 0.5; precision and recall below 1 by the k-NN
    manifolds' own sampling). d_auc has no such value: a perfect generator gives 0.5."""
    pick = torch.randperm(data.train.shape[0], generator=torch.Generator().manual_seed(0))[: trial.eval_samples]
    as_model = trial.model_copy(update={"metrics": tuple(m for m in metrics if m in FEATURE_METRICS)})
    return feature_scores(as_model, data, real_test(trial, data), data.train[pick.to(data.device)], seed=0)

"""The names a study file may give each kind of variant (data sets, architectures, losses,
metrics, samplers, pruners...).

The built-in losses, metrics, architectures, samplers and pruners are declared here into
gansweep.extend's registries (a name, a one-line description and what each needs), torch-free:
the schema (config.schema) and the rules (config.rules) read the registries, and `gansweep
validate` stays fast. The engine and the service attach their code to these declarations
with the decorators a plugin uses; tests check that every declaration has its code.
"""

from __future__ import annotations

from typing import Literal, get_args

from gansweep.extend import (  # noqa: F401 (the registries, read here)
    ARCHITECTURES, LOSSES, METRICS, PRUNERS, REGULARISERS, SAMPLERS, SCHEDULERS,
)

ToyDataset = Literal["line", "circle", "ring8", "grid25"]
ImageDataset = Literal["digits", "mnist", "fashion-mnist", "cifar10"]
DatasetName = Literal[ToyDataset, ImageDataset]
TOY_DATASETS: tuple[str, ...] = get_args(ToyDataset)
IMAGE_DATASETS: tuple[str, ...] = get_args(ImageDataset)
Activation = Literal["relu", "leaky_relu", "elu", "tanh", "gelu"]
GeneratorOutput = Literal["auto", "tanh", "sigmoid", "identity"]
# The generator's normalisation (trial.g_norm): none, batch norm, or Salimans et al.'s virtual
# batch norm (ARCHITECTURES batch_norm_generator: a G that has batch norm already).
GNorm = Literal["none", "batch", "virtual_batch"]
G_NORMS: tuple[str, ...] = get_args(GNorm)

# The feature space of the sample-quality metrics on images (trial.features); a 2D set's
# metrics use its own points.
FeatureKind = Literal["domain", "inception"]

# ---------------------------------------------------------------------------- losses
# smoothable: trained against a real target, so one-sided label smoothing means something;
# input_gradient: D's cost reads its gradient at its inputs (engine.losses d_input_gradient),
# which batch norm in D or a minibatch layer would make another sample's too.
for _name, _text, _meta in (
    ("minimax", "the zero-sum game: G minimises E log(1 - D(G(z))) (Goodfellow et al. 2014)", {}),
    ("non_saturating", "G maximises E log D(G(z)): same fixed point, strong early gradients", {}),
    ("max_likelihood", "G minimises -E exp(logit D(G(z))): KL(p_data || p_g) at the optimal D (Goodfellow 2014b)", {}),
    ("least_squares", "LSGAN (Mao et al. 2017): D's targets 1 (or s) and 0, G aims at 1", {}),
    ("hinge", "the hinge loss of the geometric GAN and SAGAN", {"smoothable": False, "probabilistic": False}),
    ("wasserstein_gp", "WGAN-GP (Gulrajani et al. 2017): critic scores and a gradient penalty (gp_weight)",
     {"smoothable": False, "probabilistic": False, "input_gradient": True}),
    ("feature_matching", "D's cross-entropy; G matches the mean of D's hidden features (Salimans et al. 2016)",
     {"features": True}),
):
    LOSSES.declare(_name, _text, **{"smoothable": True, "probabilistic": _name != "least_squares",
                                    "input_gradient": False, "features": False, **_meta})

# ---------------------------------------------------------------------------- architectures
# batch_norm_critic: D has batch norm (no per-sample input gradient); batch_norm_generator: G
# has batch norm already (g_norm: batch adds none); images_only: refused on 2D sets.
ARCHITECTURES.declare("mlp", "fully connected G and D (g_hidden, d_hidden, activations, dropout)")
ARCHITECTURES.declare("maxout", "Goodfellow et al. 2014's MNIST nets: a ReLU G and a maxout D with dropout",
                      d_hidden_layers=2)
ARCHITECTURES.declare("dcgan", "Radford et al. 2016's convolutional G and D with batch norm (dcgan_width)",
                      batch_norm_critic=True, batch_norm_generator=True, images_only=True)

# ---------------------------------------------------------------------------- metrics
# reads: what a metric is computed from (samples: the evaluation's samples against held-out
# data; features: their embeddings in trial.features' space; discriminator: the trial's D);
# cost: how an evaluation's time grows with it. parzen_ll is every evaluation's; the others
# are computed when trial.metrics names them (gansweep.engine.quality). c2st_accuracy and
# d_auc are 0.5 when real and generated cannot be told apart and 1 when they are told apart
# perfectly: lower is better (values below 0.5 are chance fluctuations around it).
for _name, _text, _direction, _reads, _cost in (
    ("parzen_ll", "Parzen-window log-likelihood of held-out data under the samples (nats)", "maximize",
     "samples", "n_samples x n_test kernel sums"),
    ("fid", "Frechet distance of Gaussians fitted to real and generated features", "minimize",
     "features", "one embedding pass and a matrix square root"),
    ("fid_infinity", "FID extrapolated to infinitely many generated samples (Chong and Forsyth 2020)",
     "minimize", "features", "15 Frechet distances"),
    ("kid", "kernel inception distance: unbiased MMD^2 with a cubic kernel, over subsets", "minimize",
     "features", "one embedding pass and kernel sums"),
    ("precision", "share of generated samples inside the real features' k-NN manifold", "maximize",
     "features", "pairwise distances"),
    ("recall", "share of real samples inside the generated features' k-NN manifold", "maximize",
     "features", "pairwise distances"),
    ("c2st_accuracy", "held-out accuracy of a classifier trained to tell real from generated features",
     "minimize", "features", "a small classifier's training"),
    ("energy_distance", "Szekely and Rizzo's energy distance of real and generated features", "minimize",
     "features", "pairwise distances"),
    ("d_auc", "ROC AUC of the trial's own D on held-out real against generated samples", "minimize",
     "discriminator", "one D pass"),
):
    METRICS.declare(_name, _text, direction=_direction, reads=_reads, cost=_cost)
# The metrics trial.metrics may ask for beside Parzen (a plugin's join them when loaded).
QUALITY_METRICS: tuple[str, ...] = tuple(n for n in METRICS.names(built_in=True) if n != "parzen_ll")


# What the engine reports beside the registered metrics (engine/run.py train_epoch, its theory
# gaps and evaluation, engine/scoring.py, engine/train.py), any of which an objective may
# name (e.g. wall_time, minimised). Declared here, torch-free, for the rule that refuses an
# objective no trial reports; tests/config/test_study_inputs.py holds it to a real trial's.
ENGINE_METRICS: tuple[str, ...] = (
    "d_loss", "d_real", "d_fake", "g_loss", "epoch_time", "wall_time", "compile_time",
    "samples_per_second", "diverged", "epoch", "d_loss_star", "g_loss_star", "d_loss_gap",
    "g_loss_gap", "parzen_stderr", "parzen_sigma", "modes_covered", "high_quality_share",
    "blind_discriminator", "d_logit_std", "kid_std", "pack_size",
    # what the feature metrics were computed with (integers): rows compared, KID's subsets, k
    "n_real", "n_generated", "kid_subset_size", "kid_subsets", "pr_k",
)


def reported_metrics() -> tuple[str, ...]:
    """Every metric name an objective may name now: the registered (plugins' included) and
    what the engine reports each epoch or evaluation."""
    return (*METRICS.names(), *ENGINE_METRICS)


def metric_direction(name: str) -> str | None:
    """The direction an objective on a registered metric aims for; None for other names."""
    return METRICS.meta(name, "direction") if name in METRICS else None


def quality_metrics() -> tuple[str, ...]:
    """Every metric trial.metrics may name now: the built-ins' and the loaded plugins'."""
    return tuple(n for n in METRICS.names() if n != "parzen_ll")


# ---------------------------------------------------------------------------- Optuna
for _name, _text in (
    ("grid", "every point of the choices' grid, once (GridSampler)"),
    ("random", "independent uniform draws (RandomSampler)"),
    ("tpe", "tree-structured Parzen estimator (TPESampler)"),
    ("cmaes", "CMA evolution strategy over the numeric fields (CmaEsSampler)"),
    ("gp", "Gaussian-process Bayesian optimisation (GPSampler)"),
    ("nsga2", "NSGA-II, for two objectives (NSGAIISampler)"),
):
    SAMPLERS.declare(_name, _text)
for _name, _text in (
    ("none", "never prune"),
    ("median", "prune below the median of earlier trials at the same epoch (MedianPruner)"),
    ("percentile", "prune below a percentile of earlier trials (PercentilePruner)"),
    ("successive_halving", "asynchronous successive halving (SuccessiveHalvingPruner)"),
    ("hyperband", "Hyperband over successive-halving brackets (HyperbandPruner)"),
    ("wilcoxon", "a signed-rank test against the best trial's evaluations (WilcoxonPruner)"),
):
    PRUNERS.declare(_name, _text)
# Tune's trial schedulers (service/pruner.py): "none" runs each unit to its end unless the
# study's Optuna pruner (pruner:) stops a member, through the ledger.
SCHEDULERS.declare("none", "no Tune scheduler of its own: Optuna's pruner (pruner:) decides, through the ledger")
SAMPLER_NAMES: tuple[str, ...] = SAMPLERS.names()
PRUNER_NAMES: tuple[str, ...] = PRUNERS.names()

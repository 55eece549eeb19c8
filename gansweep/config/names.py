"""The names a study file may give each kind of variant (data sets, architectures, losses,
samplers, pruners...).

Importing nothing of gansweep: the schema (config.schema) and the rules (config.rules) read
them, and `gansweep validate` stays fast. Tests check that each registry of code (the engine's
DATASETS, ARCHITECTURES, LOSSES; the service's SAMPLERS, PRUNERS) holds exactly these names.
"""

from __future__ import annotations

from typing import Literal, get_args

ToyDataset = Literal["line", "circle", "ring8", "grid25"]
ImageDataset = Literal["digits", "mnist", "fashion-mnist", "cifar10"]
DatasetName = Literal[ToyDataset, ImageDataset]
TOY_DATASETS: tuple[str, ...] = get_args(ToyDataset)
IMAGE_DATASETS: tuple[str, ...] = get_args(ImageDataset)
ArchitectureName = Literal["mlp", "maxout", "dcgan"]
LossName = Literal[
    "minimax", "non_saturating", "max_likelihood", "least_squares", "hinge", "wasserstein_gp",
    "feature_matching",
]
Activation = Literal["relu", "leaky_relu", "elu", "tanh", "gelu"]
GeneratorOutput = Literal["auto", "tanh", "sigmoid", "identity"]
# Losses whose discriminator is trained against a real target, so smoothing means something.
SMOOTHABLE_LOSSES = ("minimax", "non_saturating", "max_likelihood", "least_squares", "feature_matching")
# Losses that penalise the norm of D's gradient at each input (WGAN-GP), and the architectures
# whose discriminator has batch norm: the two do not go together (config.rules).
PENALISED_LOSSES = ("wasserstein_gp",)
BATCH_NORM_CRITICS = ("dcgan",)
# The generator's normalisation (trial.g_norm): none, batch norm, or Salimans et al.'s virtual
# batch norm; and the architectures whose generator has batch norm already (dcgan).
GNorm = Literal["none", "batch", "virtual_batch"]
G_NORMS: tuple[str, ...] = get_args(GNorm)
BATCH_NORM_GENERATORS = ("dcgan",)

# Optuna's samplers and pruners, by the names the service's registries give them.
SamplerName = Literal["grid", "random", "tpe", "cmaes", "gp", "nsga2"]
PrunerName = Literal["none", "median", "percentile", "successive_halving", "hyperband", "wilcoxon"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)
PRUNERS: tuple[str, ...] = get_args(PrunerName)

# Sample-quality metrics a trial may compute at each evaluation beside Parzen (trial.metrics;
# gansweep.engine.quality), in the feature space trial.features names (images; a 2D set's own
# points otherwise).
QualityMetric = Literal["fid", "kid", "precision", "recall", "c2st_accuracy", "d_auc"]
QUALITY_METRICS: tuple[str, ...] = get_args(QualityMetric)
FeatureKind = Literal["domain", "inception"]
# The direction of an objective on each metric; a study file that names one of the quality
# metrics gets its direction unless it gives one, and may not give the other. c2st_accuracy
# and d_auc are 0.5 when real and generated cannot be told apart and 1 when they are told
# apart perfectly: lower is better (values below 0.5 are chance fluctuations around it).
METRIC_DIRECTIONS: dict[str, str] = {
    "parzen_ll": "maximize", "fid": "minimize", "kid": "minimize", "precision": "maximize",
    "recall": "maximize", "c2st_accuracy": "minimize", "d_auc": "minimize",
}

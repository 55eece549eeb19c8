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
    "minimax", "non_saturating", "max_likelihood", "least_squares", "hinge", "wasserstein_gp"
]
Activation = Literal["relu", "leaky_relu", "elu", "tanh", "gelu"]
GeneratorOutput = Literal["auto", "tanh", "sigmoid", "identity"]
# Losses whose discriminator is trained against a real target, so smoothing means something.
SMOOTHABLE_LOSSES = ("minimax", "non_saturating", "max_likelihood", "least_squares")

# Optuna's samplers and pruners, by the names the service's registries give them.
SamplerName = Literal["grid", "random", "tpe", "cmaes", "gp", "nsga2"]
PrunerName = Literal["none", "median", "percentile", "successive_halving", "hyperband"]
SAMPLERS: tuple[str, ...] = get_args(SamplerName)
PRUNERS: tuple[str, ...] = get_args(PrunerName)

"""The names a study file may give each kind of variant (data sets, architectures, losses...).

Torch-free and importing nothing of gansweep: the study schema (gansweep.study) and the pack
rules (gansweep.packrules) both read them, and `gansweep validate` stays fast. Tests check that
each torch-side registry holds exactly these names.
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

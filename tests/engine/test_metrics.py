"""Mode coverage on toy data, sample grids and scatter plots."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from PIL import Image

from gansweep.engine.metrics import mode_coverage, save_sample_grid, save_scatter

STD = 0.02


def ring(k: int = 8, radius: float = 2.0) -> torch.Tensor:
    angles = torch.arange(k, dtype=torch.float64) * (2 * math.pi / k)
    return radius * torch.stack([angles.cos(), angles.sin()], 1)  # (K, 2)


def grid25() -> torch.Tensor:
    axis = torch.arange(-2.0, 3.0, dtype=torch.float64)
    return torch.cartesian_prod(axis, axis)  # (25, 2)


def test_samples_at_every_mode_cover_all() -> None:
    modes = ring()
    samples = modes.repeat(300, 1)  # 2,400 samples, 300 on each mode
    covered, share = mode_coverage(samples, modes, STD)
    assert covered == 8
    assert share == pytest.approx(1.0)


def test_samples_at_one_mode_cover_one() -> None:
    modes = ring()
    samples = modes[3].repeat(2500, 1) + STD * torch.randn(2500, 2, dtype=torch.float64) * 0.5
    assert mode_coverage(samples, modes, STD) == (1, pytest.approx(1.0))


def test_noise_far_from_the_modes_covers_none() -> None:
    samples = 10.0 + 10.0 * torch.rand(2500, 2)
    assert mode_coverage(samples, grid25(), STD) == (0, 0.0)


def test_three_std_makes_a_sample_high_quality() -> None:
    modes = ring()
    inside = modes[0] + torch.tensor([2.9 * STD, 0.0], dtype=torch.float64)
    outside = modes[0] + torch.tensor([0.0, 3.1 * STD], dtype=torch.float64)
    covered, share = mode_coverage(torch.stack([inside, outside]), modes, STD, min_share=0.5)
    assert (covered, share) == (1, pytest.approx(0.5))


@pytest.mark.parametrize("min_share", [None, 0.008])
def test_pacgan_rule_twenty_of_2500_on_25_modes(min_share: float | None) -> None:
    modes = grid25()
    far = torch.full((2500 - 20 - 19, 2), 50.0, dtype=torch.float64)
    samples = torch.cat([modes[0].repeat(20, 1), modes[1].repeat(19, 1), far])
    covered, share = mode_coverage(samples, modes, STD, min_share=min_share)
    assert covered == 1  # 20 samples count, 19 do not
    assert share == pytest.approx(39 / 2500)


def test_bad_shapes_are_named() -> None:
    with pytest.raises(ValueError, match="must agree"):
        mode_coverage(torch.zeros(4, 3), ring(), STD)


def test_sample_grid_png(tmp_path: Path) -> None:
    images = torch.rand(10, 1, 28, 28)
    path = save_sample_grid(images, tmp_path / "grids" / "epoch_001.png")
    assert path.stat().st_size > 0
    with Image.open(path) as png:
        # ceil(sqrt(10)) = 4 columns, 3 rows, 28 pixels plus torchvision's 2-pixel padding
        assert png.format == "PNG"
        assert png.size == (4 * 30 + 2, 3 * 30 + 2)
    path = save_sample_grid(torch.rand(16, 3, 8, 8), tmp_path / "rgb.png", nrow=8)
    with Image.open(path) as png:
        assert png.size == (8 * 10 + 2, 2 * 10 + 2)


def test_scatter_png(tmp_path: Path) -> None:
    real = ring().float().repeat(50, 1) + 0.05 * torch.randn(400, 2)
    samples = torch.randn(200, 2)
    path = save_scatter(samples, real, tmp_path / "scatter.png", title="epoch 3")
    assert path.stat().st_size > 0
    with Image.open(path) as png:
        assert png.size == (400, 400)
        pixels = np.asarray(png.convert("RGB")).reshape(-1, 3).astype(int)
    red = (pixels[:, 0] > 200) & (pixels[:, 1] < 60) & (pixels[:, 2] < 60)
    light_blue = abs(pixels - [173, 216, 230]).sum(1) < 30
    assert red.any() and light_blue.any()
    small = save_scatter(samples, real, tmp_path / "small.png", size_inches=3, dpi=50)
    assert matplotlib.image.imread(small).shape[:2] == (150, 150)

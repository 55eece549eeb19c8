"""Sample metrics and pictures: mode coverage on the 2D toy sets, sample grids, scatter plots.

Mode coverage follows VEEGAN (Srivastava et al. 2017) and PacGAN (Lin et al. 2018): a
generated point is high quality when it lies within 3 standard deviations of the nearest
mode centre, and it is registered to that mode. PacGAN counts a mode of the 25-Gaussian grid
as lost when fewer than 20 of 2,500 samples land on it: a fifth of the 100 that a perfect
generator puts there. gansweep applies that rule to any number of modes K: a mode is covered
when it receives at least 1 / (5 K) of all N samples (a fifth of its fair share N / K).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

HIGH_QUALITY_STDS = 3.0
# A mode is covered by default when it receives this fraction of its fair share N / K.
FAIR_SHARE_FRACTION = 0.2


def mode_coverage(
    samples: Tensor, modes: Tensor, std: float, *, min_share: float | None = None
) -> tuple[int, float]:
    """(modes covered, share of high-quality samples) for (N, 2) samples and (K, 2) modes.

    A sample is high quality within 3 std of its nearest mode centre and then counts for that
    mode. A mode is covered when at least min_share of all N samples count for it; the default
    min_share is 1 / (5 K) (PacGAN's 20 of 2,500 on 25 modes).
    """
    if samples.dim() != 2 or modes.dim() != 2 or samples.shape[1] != modes.shape[1]:
        raise ValueError(
            f"samples (N, D) and modes (K, D) must agree in D, got {tuple(samples.shape)} "
            f"and {tuple(modes.shape)}"
        )
    if not std > 0:
        raise ValueError(f"std must be positive, got {std}")
    n, k = samples.shape[0], modes.shape[0]
    if n == 0:
        return 0, 0.0
    dist = torch.cdist(samples.double(), modes.to(samples.device).double())  # (N, K)
    nearest_dist, nearest = dist.min(1)
    high_quality = nearest_dist <= HIGH_QUALITY_STDS * std  # (N,)
    counts = torch.bincount(nearest[high_quality], minlength=k)  # (K,)
    if min_share is None:
        # counts >= FAIR_SHARE_FRACTION * N / K, in integers: counts * 5K >= N
        covered = counts * round(k / FAIR_SHARE_FRACTION) >= n
    else:
        if not 0.0 < min_share <= 1.0:
            raise ValueError(f"min_share must be in (0, 1], got {min_share}")
        # ceil with a little slack, so that 0.008 * 2500 asks for 20 samples, not 21
        covered = counts >= max(1, math.ceil(min_share * n - 1e-9))
    return int(covered.sum()), float(high_quality.double().mean())


def save_sample_grid(images: Tensor, path: Path, nrow: int | None = None) -> Path:
    """Save (B, C, H, W) images in [0, 1] as one PNG grid, nrow images per row (default: a
    square-ish grid of ceil(sqrt(B)) columns), with torchvision's 2-pixel padding."""
    from torchvision.utils import save_image  # torchvision is slow to import

    if images.dim() != 4:
        raise ValueError(f"images must have shape (B, C, H, W), got {tuple(images.shape)}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if nrow is None:
        nrow = max(1, math.ceil(math.sqrt(images.shape[0])))
    save_image(images.detach().float().cpu(), path, nrow=nrow)
    return path


def save_scatter(
    samples: Tensor,
    real: Tensor,
    path: Path,
    title: str = "",
    *,
    limit: float | None = None,
    size_inches: float = 4.0,
    dpi: int = 100,
) -> Path:
    """Scatter (N, 2) generated samples (red) over (M, 2) real data (light blue), as in seed
    003's figure 4. Equal aspect; the axes span [-limit, limit] on both sides, by default
    1.25 times the largest real coordinate, so that they depend on the data set alone: frames
    of successive epochs line up, and a diverging generator cannot rescale the plot."""
    from matplotlib.figure import Figure  # the Figure API needs no pyplot and no backend

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    real = real.detach().double().cpu()
    samples = samples.detach().double().cpu()
    if limit is None:
        largest = float(real.abs().max()) if real.numel() else 1.0
        limit = 1.25 * largest if largest > 0 else 1.0
    fig = Figure(figsize=(size_inches, size_inches), dpi=dpi)
    ax = fig.add_subplot()
    ax.scatter(real[:, 0], real[:, 1], s=4, c="lightblue", label="real", linewidths=0)
    ax.scatter(samples[:, 0], samples[:, 1], s=4, c="red", label="generated", linewidths=0)
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")
    if title:
        ax.set_title(title)
    ax.legend(loc="upper right", fontsize="small", markerscale=3)
    fig.savefig(path, dpi=dpi)
    fig.clear()  # a pyplot-free Figure is not registered anywhere; clearing frees it now
    return path

"""A trial's samples, their scores (Parzen, mode coverage) and pictures, from its generator.

Scales: the data keep their own coordinates (2D points as generated, images in [0, 1]); a
tanh generator of images trains on 2x - 1 and its samples are mapped back. The data's range,
not the generator's squashing, decides: a bounded output that cannot cover the data's range
is an error naming the range (check_output_range), never a silent rescaling.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from gansweep.config.rules import OUTPUT_RANGES, RANGE_TAIL
from gansweep.config.schema import TrialConfig
from gansweep.engine.dataset import Dataset, image_tanh, to_data_scale, to_model_scale  # noqa: F401 (read here by callers)
from gansweep.engine.draws import noise
from gansweep.engine.metrics import mode_coverage, save_sample_grid, save_scatter
from gansweep.engine.parzen import evaluate as parzen_evaluate
from gansweep.engine.scoring import quality_scores
from gansweep.errors import ConfigError

Metrics = dict[str, float]


def check_output_range(trial: TrialConfig, data: Dataset) -> None:
    """A 2D set's points must lie in the generator output's range (up to RANGE_TAIL). The
    study's validation refuses a built-in set first (config.rules.check_output_ranges, from
    its TOY_EXTENTS); this is the final guard, for a file of points."""
    bounds = OUTPUT_RANGES.get(trial.generator_output)
    if data.is_image or bounds is None:
        return
    points = data.train.flatten(1).float()
    low, high = torch.quantile(points, RANGE_TAIL, dim=0), torch.quantile(points, 1 - RANGE_TAIL, dim=0)
    if bool((low <= bounds[0]).any() or (high >= bounds[1]).any()):
        raise ConfigError(
            f"g_output: {trial.generator_output} covers ({bounds[0]:g}, {bounds[1]:g}) but "
            f"{trial.dataset} spans [{points.min().item():.3f}, {points.max().item():.3f}] "
            f"(99.8% of it in [{low.min().item():.3f}, {high.max().item():.3f}]); "
            "use g_output: identity for 2D sets"
        )


@torch.no_grad()
def generate(trial: TrialConfig, data: Dataset, generator: nn.Module, n: int, chunk: int = 2_000) -> Tensor:
    """n samples in the data's scale, from the global stream."""
    device = data.device
    generator.eval()
    parts = [
        to_data_scale(trial, data, generator(noise(trial.noise, (min(chunk, n - start), trial.noise_dim), device)))
        for start in range(0, n, chunk)
    ]
    generator.train()
    return torch.cat(parts)


def evaluate(
    trial: TrialConfig, data: Dataset, generator: nn.Module, epoch: int, discriminator: nn.Module | None = None,
) -> tuple[Metrics, Tensor]:
    """Parzen (and mode coverage on ring8 and grid25) of `eval_samples` samples, and the
    quality metrics trial.metrics lists (engine/scoring.py; d_auc needs the discriminator);
    also returns the samples. Evaluation draws its noise from its own seeded stream so that scoring does
    not shift the training stream: the same seed gives the same losses whatever eval_every."""
    device = data.device
    rng_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    torch.manual_seed(trial.seed + 1_000_003 * epoch)
    samples = generate(trial, data, generator, trial.eval_samples)
    torch.set_rng_state(rng_state)
    if cuda_state is not None:
        torch.cuda.set_rng_state(cuda_state, device)
    valid = data.valid[: trial.eval_valid]
    test = data.test if trial.eval_test is None else data.test[: trial.eval_test]
    result = parzen_evaluate(samples, valid, test, trial.parzen_sigmas or data.default_sigmas)
    metrics = {"parzen_ll": result.mean, "parzen_stderr": result.stderr, "parzen_sigma": result.sigma}
    if data.modes is not None and data.mode_std is not None:
        covered, quality = mode_coverage(samples, data.modes, data.mode_std)
        metrics["modes_covered"] = float(covered)
        metrics["high_quality_share"] = quality
    metrics.update(quality_scores(trial, data, samples, discriminator, epoch))  # type: ignore[arg-type]
    return metrics, samples


def save_samples(
    trial: TrialConfig, data: Dataset, generator: nn.Module, epoch: int, folder: Path,
    samples: Tensor | None = None,
) -> Path:
    """A sample grid (images) or a scatter over the test points (2D) for this epoch; reuses
    an evaluation's `samples` where given."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"epoch_{epoch:04d}.png"
    if data.is_image:
        shown = (samples if samples is not None else generate(trial, data, generator, 64))[:64]
        return save_sample_grid(shown.reshape(-1, *data.shape).cpu(), path)
    shown = (samples if samples is not None else generate(trial, data, generator, 1_000))[:1_000]
    return save_scatter(shown.cpu(), data.test.cpu(), path, title=f"{trial.dataset}, epoch {epoch}")

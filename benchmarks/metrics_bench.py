"""Cost of one evaluation's sample-quality metrics against Parzen's, on Fashion-MNIST, and the
domain classifier's training time and test accuracy.

    python -m benchmarks.metrics_bench [--small] [--samples N] [--retrain] [--repeats R]

"Generated" samples are training images with Gaussian noise (a generator's quality does not
change what a metric costs): eval_samples of them against the 10,000 test images, as a trial
with the default evaluation sizes scores them. Each metric is timed on its own, the domain
features' embedding separately (computed once per evaluation, shared by fid, kid, precision,
recall and c2st_accuracy). --retrain trains the classifier again in a fresh cache folder
(its training time); otherwise the cached classifier's recorded figures are shown.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable

import torch


def timed(fn: Callable[[], object], repeats: int) -> float:
    """The median wall time of `repeats` calls, in seconds."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="2,000 samples, one repeat")
    parser.add_argument("--samples", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--retrain", action="store_true", help="train the domain classifier in a fresh cache")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    n = 2_000 if args.small else args.samples
    repeats = 1 if args.small else args.repeats
    if args.retrain:
        os.environ["GANSWEEP_CACHE"] = tempfile.mkdtemp(prefix="gansweep-metrics-bench-")

    from gansweep.config.schema import TrialConfig
    from gansweep.engine import features, quality, scoring
    from gansweep.engine.data import load_dataset
    from gansweep.engine.models import build_models
    from gansweep.engine.parzen import evaluate as parzen
    from gansweep.engine.scoring import discriminator_auc

    device = torch.device(args.device)
    data = load_dataset("fashion-mnist", device=device)
    started = time.perf_counter()
    model = features.domain_model("fashion-mnist")
    loaded = time.perf_counter() - started
    weights, record = features.domain_paths("fashion-mnist")
    info = json.loads(record.read_text())
    g = torch.Generator().manual_seed(0)
    fake = (data.train[:n].cpu() + 0.1 * torch.randn(n, *data.shape, generator=g)).clamp(0, 1).to(device)
    real = data.test
    space = scoring.feature_space("domain", data)
    real_f, fake_f = space.embed(real), space.embed(fake)
    trial = TrialConfig(dataset="fashion-mnist", eval_samples=n, device=args.device)
    _, discriminator = build_models(trial, data.shape)
    discriminator = discriminator.to(device)

    rows = [
        ("parzen_ll (sigma grid of 10 on 1,000 valid, then 10,000 test)",
         lambda: parzen(fake, data.valid[:1_000], real, data.default_sigmas)),
        ("domain features of both sets (shared by the five below)", lambda: (space.embed(real), space.embed(fake))),
        ("fid", lambda: quality.fid(real_f, fake_f)),
        (f"kid ({quality.KID_SUBSETS} subsets of {quality.KID_SUBSET_SIZE:,})", lambda: quality.kid(real_f, fake_f)),
        ("precision + recall (k = 3)", lambda: quality.precision_recall(real_f, fake_f)),
        ("c2st_accuracy (k-NN)", lambda: quality.c2st_accuracy(real_f, fake_f)),
        ("d_auc (the MLP discriminator, 1,000 valid vs 1,000 generated)",
         lambda: discriminator_auc(trial, data, discriminator, fake)),
    ]
    results = [(name, timed(fn, repeats)) for name, fn in rows]
    parzen_s = results[0][1]
    print(f"Fashion-MNIST, {n} generated vs {real.shape[0]} test images, {device}, {torch.get_num_threads()} threads, "
          f"median of {repeats}")
    print("| metric | seconds per evaluation | x Parzen's |")
    print("|---|---:|---:|")
    for name, seconds in results:
        print(f"| {name} | {seconds:.2f} | {seconds / parzen_s:.2f} |")
    print()
    print(f"domain classifier {model.name}: test accuracy {info['test_accuracy']:.4f}, trained in "
          f"{info['train_seconds']:.0f} s ({info['steps']} Adam steps of {features.DOMAIN_BATCH}, one CPU thread, "
          f"torch {info['torch']}); this run {'trained it' if args.retrain else 'read it from the cache'} "
          f"in {loaded:.1f} s; {weights}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Training throughput of one trial: gansweep's step loop against the textbook loop, in one run.

    python -m benchmarks.train_bench            # all three cases, about 3 minutes on 2 cores
    python -m benchmarks.train_bench --small    # fewer rounds, about 1 minute
    python -m benchmarks.train_bench --case toy --threads 1 --compile

Cases (the same networks, batch size and optimiser in every loop of a case):
- mlp:   Fashion-MNIST 28x28, fully connected G 100-256-512-1024-784 (tanh), D 784-512-256-1
         (LeakyReLU 0.2): the size of seed 000's notebook nets;
- toy:   the 2D circle, G 2-128-128-2, D 2-128-128-1: what the 2D studies train;
- dcgan: Fashion-MNIST 28x28, gansweep's DCGAN at width 64 (Radford et al.'s 64 channels):
         G 100 -> 128x7x7 -> 64x14x14 -> 1x28x28, D 1 -> 64 -> 128 (batch norm) -> 1.
Every case: batch 64, Adam(lr 2e-4, betas (0.5, 0.999)), k = 1, data scaled to [-1, 1].

Loops:
- textbook: seed 000's recipe. A torchvision FashionMNIST dataset (ToTensor, Normalize(0.5,
  0.5)) or, for the toy, a TensorDataset of the points, in a DataLoader(batch_size=64,
  shuffle=True); per step torch.ones/torch.zeros labels, separate real and fake BCE
  (nn.BCELoss on sigmoid outputs), D on fake.detach(), the G step reusing that fake batch,
  two optimiser steps, and `.item()` on both losses, appended to lists.
- textbook, no DataLoader: the same step on the data held as one tensor, batches sliced from
  a per-epoch permutation: separates the DataLoader's cost from the step's.
- ours: gansweep's engine as trials run it (gansweep.engine, the eager execution: data on
  the device, the draws by index, one D forward on real+fake where D has no batch norm, G's
  step differentiating G's parameters only, torch's fused Adam on the flat rows, losses
  summed on the device and read once per epoch).
- ours, pack of one: the packed execution (vmap over one row), what a pack's member costs.
- ours + torch.compile (with --compile): a trial with `compile: true`: the same iteration
  (k D steps and the G step, forward, backward and optimiser) compiled into one graph
  (gansweep.engine.executions, default inductor backend); the compile time is reported on
  its own and left out of the rate.
gansweep trials use alpha_mode=weight, alpha=0.5: m real and m fake samples per D step, each
half weighted 1/2, the work of the textbook's two BCE means (whose sum is twice ours).

Throughput: samples per second = m (k + 1) x iterations per second, m = 64, k = 1. One
iteration is one D update (a minibatch of m real and m generated samples) and one G update
(m generated samples); this is the `samples_per_second` every trial logs. The textbook loop
does a little less work per iteration: its G step reuses the D step's fakes (one G forward
fewer), where Algorithm 1 draws fresh noise, as gansweep does; it is not credited for that.

Arithmetic: each case's table gives every loop's rate in GFLOP/s, from the floating-point
operations of one of gansweep's iterations (torch.utils.flop_counter, matrix products and
convolutions, forward and backward), and the header the machine's matrix-product rates in
float32 and bf16 (a (64 x 2048) @ (2048 x 2048) product, a minibatch's shape, and a 2048^3
one): how far a compute-bound case can go at all. The textbook loop does one G forward
fewer per iteration than counted, so its rate is slightly overstated.

Timing: every loop keeps its state and runs `steps` iterations per round; the rounds are
interleaved (textbook, ours, textbook, ...) so that a change in machine load hits every loop
alike. Reported: iterations per second from the median round (and the best round), and each
loop's ratio to the textbook loop computed from medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from gansweep.config.schema import TrialConfig
from gansweep.engine import run as engine
from gansweep.engine.data import Dataset, load_dataset
from gansweep.engine.models import build_models, count_parameters

BATCH = 64
COMMON = dict(
    batch_size=BATCH, alpha=0.5, alpha_mode="weight", k=1, lr_d=2e-4, adam_beta1=0.5,
    adam_beta2=0.999, loss="non_saturating", device="cpu", seed=0, eval_every=1_000,
    epochs=1_000_000,  # never an evaluation epoch
)
CASES: dict[str, TrialConfig] = {
    "mlp": TrialConfig(
        dataset="fashion-mnist", architecture="mlp", g_hidden=(256, 512, 1024),
        d_hidden=(512, 256), g_activation="leaky_relu", noise_dim=100, **COMMON,
    ),
    "toy": TrialConfig(
        dataset="circle", architecture="mlp", g_hidden=(128, 128), d_hidden=(128, 128),
        noise_dim=2, **COMMON,
    ),
    "dcgan": TrialConfig(
        dataset="fashion-mnist", architecture="dcgan", dcgan_width=64, noise_dim=100, **COMMON,
    ),
}
# (steps per round, rounds) for the full run and for --small.
ROUNDS: dict[str, tuple[tuple[int, int], tuple[int, int]]] = {
    "mlp": ((40, 9), (20, 5)),
    "toy": ((300, 9), (150, 5)),
    "dcgan": ((12, 7), (6, 4)),
}


# ---------------------------------------------------------------------------- loops


class Loop:
    name: str

    def run(self, steps: int) -> float:
        """Train `steps` iterations; return the wall-clock seconds they took."""
        raise NotImplementedError


class Textbook(Loop):
    """Seed 000's recipe: DataLoader, ones/zeros labels, BCELoss, `.item()` per step."""

    def __init__(self, trial: TrialConfig, data: Dataset, *, dataloader: bool) -> None:
        self.name = "textbook (DataLoader, .item() per step)" if dataloader else (
            "textbook step, no DataLoader (tensor slices)"
        )
        torch.manual_seed(trial.seed)
        self.noise_dim = trial.noise_dim
        self.generator, self.discriminator = build_models(trial, data.shape)
        betas = (trial.adam_beta1, trial.adam_beta2)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=trial.lr_d, betas=betas)
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=trial.lr_d, betas=betas)
        self.criterion = nn.BCELoss()
        self.d_losses: list[float] = []
        self.g_losses: list[float] = []
        if dataloader:
            self.loader: DataLoader | None = DataLoader(
                textbook_dataset(trial, data), batch_size=BATCH, shuffle=True
            )
            self.batches = iter(self.loader)
        else:
            self.loader = None
            scale = (lambda x: x * 2 - 1) if data.is_image else (lambda x: x)
            self.tensor = scale(data.train)
            self.order = torch.randperm(len(self.tensor))
            self.position = 0

    def next_batch(self) -> torch.Tensor:
        if self.loader is not None:
            try:
                return next(self.batches)[0]
            except StopIteration:  # a new epoch: a new shuffle
                self.batches = iter(self.loader)
                return next(self.batches)[0]
        if self.position + BATCH > len(self.order):
            self.order, self.position = torch.randperm(len(self.tensor)), 0
        index = self.order[self.position : self.position + BATCH]
        self.position += BATCH
        return self.tensor[index]

    def d_prob(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.discriminator(x)).view(-1, 1)  # the notebook's D ends in Sigmoid

    def run(self, steps: int) -> float:
        started = time.perf_counter()
        for _ in range(steps):
            real = self.next_batch()
            b = real.size(0)
            real_labels = torch.ones(b, 1)
            fake_labels = torch.zeros(b, 1)
            # discriminator
            self.opt_d.zero_grad()
            d_real = self.criterion(self.d_prob(real), real_labels)
            z = torch.randn(b, self.noise_dim)
            fake = self.generator(z)
            d_fake = self.criterion(self.d_prob(fake.detach()), fake_labels)
            d_loss = d_real + d_fake
            d_loss.backward()
            self.opt_d.step()
            # generator
            self.opt_g.zero_grad()
            g_loss = self.criterion(self.d_prob(fake), real_labels)
            g_loss.backward()
            self.opt_g.step()
            self.d_losses.append(d_loss.item())
            self.g_losses.append(g_loss.item())
        return time.perf_counter() - started


def textbook_dataset(trial: TrialConfig, data: Dataset) -> torch.utils.data.Dataset:
    if not data.is_image:
        return TensorDataset(data.train)
    import torchvision
    from torchvision import transforms

    from gansweep.engine.image_files import find_root

    root = find_root(trial.dataset, trial.data_dir)  # the torchvision layout gansweep reads
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))])
    return torchvision.datasets.FashionMNIST(str(root), train=True, transform=transform)


class Ours(Loop):
    def __init__(self, trial: TrialConfig, data: Dataset, name: str, execution: str = "eager",
                 autocast: bool | None = None) -> None:
        self.name = name
        self.unit = engine.build_unit([trial], data, execution=execution, autocast=autocast)
        self.compile_s = self.run(2) if execution.startswith("compiled") else 0.0  # compiles the iteration

    def run(self, steps: int) -> float:
        trial = self.unit.trials[0]
        if trial.steps_per_epoch != steps:
            self.unit.trials = [trial.model_copy(update={"steps_per_epoch": steps})]
        started = time.perf_counter()
        engine.train_epoch(self.unit)  # includes the epoch's one read-back
        return time.perf_counter() - started


# ---------------------------------------------------------------------------- measuring


@dataclass
class Row:
    name: str
    seconds: list[float]
    steps: int
    note: str = ""

    @property
    def median_its(self) -> float:
        return self.steps / statistics.median(self.seconds)

    @property
    def best_its(self) -> float:
        return self.steps / min(self.seconds)


def measure(loops: list[Loop], steps: int, rounds: int) -> list[Row]:
    for loop in loops:  # warm-up: allocator, thread pool, first-call paths
        loop.run(max(2, steps // 5))
    times: dict[str, list[float]] = {loop.name: [] for loop in loops}
    for r in range(rounds):
        order = loops if r % 2 == 0 else loops[::-1]  # alternate who goes first
        for loop in order:
            times[loop.name].append(loop.run(steps))
    return [Row(loop.name, times[loop.name], steps) for loop in loops]


def bench_case(case: str, *, small: bool, compile_models: bool) -> tuple[TrialConfig, list[Row], float]:
    trial = CASES[case]
    data = load_dataset(trial.dataset, seed=trial.seed)
    steps, rounds = ROUNDS[case][1 if small else 0]
    loops: list[Loop] = [
        Textbook(trial, data, dataloader=True),
        Textbook(trial, data, dataloader=False),
    ]
    default_bf16 = data.is_image and engine.native_bf16(torch.device(trial.device))
    if default_bf16:  # show float32 apart from bf16
        loops.append(Ours(trial, data, "ours, float32", autocast=False))
    loops.append(Ours(trial, data, f"ours (default{', bf16 autocast' if default_bf16 else ''})"))
    loops.append(Ours(trial, data, "ours, pack of one (vmap)", execution="packed"))
    compiled = None
    if compile_models:
        compiled = Ours(trial, data, "ours + torch.compile (trial compile: true)", execution="compiled")
        loops.append(compiled)
    rows = measure(loops, steps, rounds)
    if compiled is not None:
        rows[-1].note = f"compile: {compiled.compile_s:.0f} s"
    return trial, rows, flops_per_iteration(trial, data)


def flops_per_iteration(trial: TrialConfig, data: Dataset) -> float:
    """Floating-point operations of one iteration of gansweep's loop (k D steps, one G step),
    counted by torch's FlopCounterMode: matrix products and convolutions, both passes."""
    unit = engine.build_unit([trial.model_copy(update={"steps_per_epoch": 1})], data, autocast=False)
    engine.train_epoch(unit)  # first-call paths out of the way
    with FlopCounterMode(display=False) as counter:
        engine.train_epoch(unit)
    return float(counter.get_total_flops())


def matmul_rate(rows: int, dtype: torch.dtype, size: int = 2048) -> float:
    """GFLOP/s of (rows x size) @ (size x size) products on this machine's torch threads."""
    a, b = torch.randn(rows, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    repeats = max(3, int(2e10 / (2 * rows * size * size)))  # about 20 GFLOP of work
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * rows * size * size * repeats / (time.perf_counter() - started) / 1e9


def describe(trial: TrialConfig) -> str:
    shape = (1, 28, 28) if trial.dataset != "circle" else (2,)
    g, d = build_models(trial, shape)
    return (
        f"{trial.dataset}, {trial.architecture}, G {count_parameters(g):,} / "
        f"D {count_parameters(d):,} parameters, batch {trial.batch_size}"
    )


def table(case: str, trial: TrialConfig, rows: list[Row], flops: float) -> str:
    base = rows[0].median_its
    per_iter = BATCH * (trial.k + 1)
    lines = [
        f"### {case}: {describe(trial)}, {flops / 1e6:,.1f} MFLOP per iteration",
        "",
        "| loop | it/s (median) | samples/s (median) | it/s (best) | GFLOP/s (median) | vs textbook | note |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row.name} | {row.median_its:.1f} | {row.median_its * per_iter:,.0f} | "
            f"{row.best_its:.1f} | {row.median_its * flops / 1e9:.1f} | {row.median_its / base:.2f}x | {row.note} |"
        )
    return "\n".join(lines)


def header(threads: int) -> str:
    load = os.getloadavg()
    rates = ", ".join(
        f"{name} {matmul_rate(64, dtype):.0f} (64 rows) / {matmul_rate(2048, dtype):.0f} (2048 rows)"
        for name, dtype in (("float32", torch.float32), ("bf16", torch.bfloat16))
    )
    return (
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"torch {torch.__version__}, {threads} torch threads, no GPU; "
        f"load average at start {load[0]:.1f}; {time.strftime('%Y-%m-%d %H:%M')}\n"
        f"matrix products, GFLOP/s: {rates}"
    )


def main(argv: list[str] | None = None) -> dict[str, list[Row]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="fewer, shorter rounds")
    parser.add_argument("--case", choices=list(CASES), action="append", help="default: all")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads for every loop (default: the cpu count)")
    parser.add_argument("--compile", action="store_true",
                        help="add a torch.compile row (compiles for up to half a minute per case)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(header(args.threads))
    results = {}
    for case in args.case or list(CASES):
        trial, rows, flops = bench_case(case, small=args.small, compile_models=args.compile)
        print()
        print(table(case, trial, rows, flops), flush=True)
        results[case] = rows
    return results


if __name__ == "__main__":
    main()

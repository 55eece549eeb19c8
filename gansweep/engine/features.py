"""The feature spaces the sample-quality metrics (engine/quality.py) are computed in.

    points     a 2D set's own coordinates
    domain     the penultimate layer of a small CNN that gansweep trains on the image set's
               own class labels, once per data set, on the CPU with a fixed seed and a fixed
               order of minibatches; cached on disk (cache_dir()/features/) with its test
               accuracy and the SHA-256 of its weights, which every score names
    inception  Inception-v3's 2048-d pool features (engine/inception.py), from weights on disk

A space's `name` says which features a score was computed in (domain:fashion-mnist:<sha8>,
inception:<sha8>, points:circle): scores in different spaces are not comparable.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from gansweep.engine.data import image_labels
from gansweep.engine.image_files import cache_dir
from gansweep.errors import DataError

DOMAIN_VERSION = 3  # bump when the network, its training or its record change: a new cache file
DOMAIN_SEED = 20_251_203
DOMAIN_WIDTHS = (16, 32, 64)  # channels of the three convolutions
DOMAIN_FEATURES = 128
DOMAIN_STEPS = 1_200  # Adam steps of DOMAIN_BATCH images...
DOMAIN_MAX_EPOCHS = 20  # ...or this many passes over a small set (digits), whichever is fewer
DOMAIN_BATCH = 128
DOMAIN_LR = 3e-3  # 1e-3 reached 78% on Fashion-MNIST in the same steps, 3e-3 84%
EMBED_CHUNK = 1_000


@dataclass(frozen=True)
class FeatureSpace:
    name: str  # recorded with every score
    embed: Callable[[Tensor], Tensor]  # (N, *shape) rows in the data's scale -> (N, F)


class DomainClassifier(nn.Module):
    """Three strided convolutions, pooled to 2x2, a 128-unit layer (the features), logits."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        a, b, c = DOMAIN_WIDTHS
        self.body = nn.Sequential(
            nn.Conv2d(channels, a, 3, padding=1), nn.ReLU(),
            nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv2d(b, c, 3, stride=2, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(),
            nn.Linear(4 * c, DOMAIN_FEATURES), nn.ReLU(),
        )
        self.head = nn.Linear(DOMAIN_FEATURES, classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))

    def features(self, x: Tensor) -> Tensor:
        return self.body(x)


@dataclass(frozen=True)
class DomainModel:
    network: DomainClassifier
    dataset: str
    sha256: str  # of the weights' values (weights_sha256), not of the file's bytes
    test_accuracy: float
    train_seconds: float
    path: Path

    @property
    def name(self) -> str:
        return f"domain:{self.dataset}:{self.sha256[:8]}"


def weights_sha256(state: dict[str, Tensor]) -> str:
    """SHA-256 of a state_dict's names, dtypes, shapes and values, in order: the network's
    identity. Not the file's bytes: torch.save writes a random serialization id into every
    file, so two saves of the same weights differ."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def domain_paths(dataset: str) -> tuple[Path, Path]:
    """(weights, record) of a data set's classifier in the cache folder."""
    base = cache_dir() / "features" / f"domain-{dataset}-v{DOMAIN_VERSION}"
    return base.with_suffix(".pt"), base.with_suffix(".json")


@torch.no_grad()
def accuracy(network: nn.Module, images: Tensor, labels: Tensor) -> float:
    network.eval()
    hits = sum(
        int((network(images[s : s + EMBED_CHUNK]).argmax(1) == labels[s : s + EMBED_CHUNK]).sum())
        for s in range(0, images.shape[0], EMBED_CHUNK)
    )
    return hits / images.shape[0]


def train_domain_classifier(train: Tensor, labels: Tensor, classes: int) -> DomainClassifier:
    """Adam on cross-entropy, on the CPU, in one thread: seeded initialisation and minibatch
    order, and one summation order whatever the machine's cores, so the same data gives the
    same weights with one torch build (and a small network gains nothing from more threads
    on a loaded machine: 14 ms a digits step in one thread, 160 ms in two busy ones)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(train, labels, classes)
    finally:
        torch.set_num_threads(threads)


def _train(train: Tensor, labels: Tensor, classes: int) -> DomainClassifier:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(DOMAIN_SEED)
        network = DomainClassifier(train.shape[1], classes)
        optimiser = torch.optim.Adam(network.parameters(), lr=DOMAIN_LR)
        order = torch.Generator().manual_seed(DOMAIN_SEED)
        epochs = math.ceil(DOMAIN_MAX_EPOCHS * train.shape[0] / DOMAIN_BATCH)
        network.train()
        for _ in range(min(DOMAIN_STEPS, epochs)):
            index = torch.randint(0, train.shape[0], (DOMAIN_BATCH,), generator=order)
            loss = nn.functional.cross_entropy(network(train[index]), labels[index])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    return network.eval()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One process at a time trains a data set's classifier; the others then read its file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_cached(dataset: str, weights: Path, record: Path) -> DomainModel:
    info = json.loads(record.read_text())
    try:
        saved = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated or corrupted zip
        raise DataError(
            f"domain classifier of {dataset!r}: {weights} cannot be read ({' '.join(str(err).split())[:200]}); "
            "delete it and its .json to train it again"
        ) from None
    found = weights_sha256(saved)
    if found != info["sha256"]:
        raise DataError(
            f"domain classifier of {dataset!r}: {weights} holds weights with SHA-256 {found[:16]}..., but "
            f"{record} records {info['sha256'][:16]}...; delete both files to train it again"
        )
    network = DomainClassifier(int(info["channels"]), int(info["classes"]))
    network.load_state_dict(saved)
    return DomainModel(network.eval(), dataset, found, float(info["test_accuracy"]), float(info["train_seconds"]), weights)


@functools.lru_cache(maxsize=4)
def domain_model(dataset: str, data_dir: str | None = None) -> DomainModel:
    """The data set's classifier: read from the cache folder, or trained and cached there."""
    weights, record = domain_paths(dataset)
    with _locked(weights):
        if weights.is_file() and record.is_file():
            return _read_cached(dataset, weights, record)
        from gansweep.engine.data import load_dataset

        data = load_dataset(dataset, data_dir=data_dir, device="cpu")
        train_labels, _, test_labels = image_labels(dataset, data_dir)
        classes = int(max(train_labels.max(), test_labels.max())) + 1
        started = time.perf_counter()
        network = train_domain_classifier(data.train, train_labels[: data.train.shape[0]], classes)
        seconds = time.perf_counter() - started
        test_accuracy = accuracy(network, data.test, test_labels)
        _write_atomically(weights, lambda tmp: torch.save(network.state_dict(), tmp))
        info = {
            "dataset": dataset, "version": DOMAIN_VERSION, "sha256": weights_sha256(network.state_dict()),
            "test_accuracy": test_accuracy, "train_seconds": seconds, "channels": data.shape[0],
            "classes": classes, "steps": min(DOMAIN_STEPS, math.ceil(DOMAIN_MAX_EPOCHS * data.train.shape[0] / DOMAIN_BATCH)),
            "torch": torch.__version__,
        }
        _write_atomically(record, lambda tmp: tmp.write_text(json.dumps(info, indent=1)))
        return DomainModel(network, dataset, info["sha256"], test_accuracy, seconds, weights)


def chunked(network: Callable[[Tensor], Tensor], shape: tuple[int, ...]) -> Callable[[Tensor], Tensor]:
    @torch.no_grad()
    def embed(x: Tensor) -> Tensor:
        rows = x.reshape(-1, *shape)
        return torch.cat([network(rows[s : s + EMBED_CHUNK].float()) for s in range(0, rows.shape[0], EMBED_CHUNK)])

    return embed

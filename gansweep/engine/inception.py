"""Inception-v3's 2048-d pool features (the standard FID network's architecture, as
torchvision builds it), from weights on disk, checked by SHA-256.

Where the weights are looked for, in order:
  1. GANSWEEP_INCEPTION_WEIGHTS, a path to a state_dict of torchvision's inception_v3;
  2. torch's hub cache, <torch.hub.get_dir()>/checkpoints/inception_v3_google-0cc3c7bd.pth,
     where torchvision keeps the ImageNet weights it downloads;
  3. a download into that cache, unless GANSWEEP_OFFLINE=1 (then never).
The expected checksum is GANSWEEP_INCEPTION_SHA256 (the whole hex digest or its start),
else, for a file named as torchvision's (inception_v3_google-0cc3c7bd.pth), that file's whole
SHA-256 pinned here (PINNED_SHA256), else the hex after the file name's last '-' (torch.hub's
convention: only the digest's start); a file with none is refused, since a score computed
with unknown weights cannot be compared with anything.

Torchvision's ImageNet weights are not the TF-Inception weights of the original FID code
(pytorch-fid's), so absolute FIDs differ from papers' by a constant-ish offset; the space's
name carries the weights' checksum.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import torch
from torch import Tensor, nn

from gansweep.engine.features import FeatureSpace, sha256_of
from gansweep.errors import ConfigError, DataError

ENV_WEIGHTS = "GANSWEEP_INCEPTION_WEIGHTS"
ENV_SHA256 = "GANSWEEP_INCEPTION_SHA256"
HUB_FILE = "inception_v3_google-0cc3c7bd.pth"
# File name -> its whole SHA-256. torchvision's source records only the name's 8 hex digits
# (and its size, "_file_size": 103.903 MB); this digest of the 108,949,747-byte file is the
# one several independent public records of it agree on (it starts with those 8 digits).
PINNED_SHA256 = {HUB_FILE: "0cc3c7bd75056d25e46cba549dc184522069b81e9787eff6df84f397bd52a5ef"}
URL = f"https://download.pytorch.org/models/{HUB_FILE}"
SIZE = 299
CHUNK = 100


def offline() -> bool:
    return os.environ.get("GANSWEEP_OFFLINE", "") not in ("", "0")


def hub_path() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / HUB_FILE


def find_weights() -> Path:
    """The weights file, downloaded into the hub cache where allowed; DataError naming every
    place looked otherwise."""
    looked = []
    explicit = os.environ.get(ENV_WEIGHTS)
    if explicit:
        path = Path(explicit).expanduser()
        if path.is_file():
            return path
        looked.append(f"{ENV_WEIGHTS}: {path} (no such file)")
    else:
        looked.append(f"{ENV_WEIGHTS} (not set)")
    cached = hub_path()
    if cached.is_file():
        return cached
    looked.append(f"torch hub cache: {cached} (absent)")
    if offline():
        looked.append("download skipped: GANSWEEP_OFFLINE is set")
    else:
        try:
            torch.hub.download_url_to_file(URL, str(cached), hash_prefix=PINNED_SHA256[HUB_FILE], progress=False)
            return cached
        except Exception as err:  # no network, a proxy, a truncated file
            looked.append(f"download from {URL} failed: {' '.join(str(err).split())[:200]}")
    raise DataError(
        f"Inception-v3 weights not found. Looked in: {'; '.join(looked)}. Put torchvision's "
        f"{HUB_FILE} there or set {ENV_WEIGHTS} to a state_dict of torchvision's inception_v3 "
        "(or use trial.features: domain)."
    )


def expected_sha256(path: Path) -> str:
    explicit = os.environ.get(ENV_SHA256)
    if explicit:
        return explicit.strip().lower()
    if path.name in PINNED_SHA256:
        return PINNED_SHA256[path.name]
    match = re.search(r"-([0-9a-f]{8,64})\.[^.]+$", path.name)
    if match:
        return match.group(1)
    raise ConfigError(
        f"Inception-v3 weights {path}: no checksum to check them against; set {ENV_SHA256} to "
        "their SHA-256 or name the file <name>-<first hex digits of its SHA-256>.pth"
    )


def check_sha256(path: Path) -> str:
    """The file's digest, when it starts with the expected one; DataError otherwise."""
    found, expected = sha256_of(path), expected_sha256(path)
    if not found.startswith(expected):
        raise DataError(
            f"Inception-v3 weights {path}: SHA-256 {found} does not match the expected {expected}..."
            " (a truncated download or other weights); delete the file or fix "
            f"{ENV_SHA256}"
        )
    return found


def inception_network() -> nn.Module:
    """torchvision's inception_v3 architecture, untrained (load_inception fills in the
    weights). transform_input=False: to_inception_input already gives the [-1, 1] scale."""
    from torchvision.models import inception_v3

    return inception_v3(weights=None, aux_logits=True, init_weights=False, transform_input=False)


def load_inception(path: Path) -> tuple[nn.Module, str]:
    """(network in eval mode with fc = identity, the weights' SHA-256)."""
    digest = check_sha256(path)
    network = inception_network()
    try:
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except Exception as err:
        raise DataError(f"Inception-v3 weights {path} are not torchvision's inception_v3: {str(err)[:300]}") from None
    network.fc = nn.Identity()
    return network.eval(), digest


def to_inception_input(images: Tensor) -> Tensor:
    """(N, C, H, W) images in [0, 1] -> (N, 3, 299, 299) in [-1, 1], pytorch-fid's pipeline
    (InceptionV3 with resize_input and normalize_input): grey channels repeated, plain
    bilinear resizing (align_corners=False, no antialiasing), then 2x - 1.

    [-1, 1] is the scale torchvision's ImageNet weights were trained at: their
    transform_input=True maps ImageNet-normalised inputs back to it, and the network here is
    built with transform_input=False, so it must be given that scale directly; ImageNet's
    mean/std normalisation would feed the first convolution -2.1 .. 2.6 instead. (torch-fidelity
    resizes with its own TensorFlow-1-style bilinear kernel: its inputs differ slightly.)"""
    x = images.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = nn.functional.interpolate(x, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return 2 * x - 1


@functools.lru_cache(maxsize=2)
def _cached(path: str, device: str) -> tuple[nn.Module, str]:
    network, digest = load_inception(Path(path))
    return network.to(device), digest


def inception_space(device: torch.device, shape: tuple[int, ...] | None = None) -> FeatureSpace:
    """Inception's pool3 features of images (rows reshaped to `shape` when given flat)."""
    network, digest = _cached(str(find_weights()), str(device))

    @torch.no_grad()
    def embed(x: Tensor) -> Tensor:
        rows = x if shape is None else x.reshape(-1, *shape)
        return torch.cat([network(to_inception_input(rows[s : s + CHUNK].to(device))) for s in range(0, rows.shape[0], CHUNK)])

    return FeatureSpace(f"inception:{digest[:8]}", embed)

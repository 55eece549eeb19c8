"""Feature spaces (engine/features.py, engine/inception.py): the domain classifier trained,
cached with its checksum and read back, deterministic; the Inception-v3 path with randomly
initialised weights of the right architecture (no download): shapes, the checksum check,
the error naming where it looked."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from gansweep.engine import features, inception, scoring
from gansweep.engine.data import load_dataset
from gansweep.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the module: digits' classifier is trained once, by the first test."""
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GANSWEEP_CACHE", str(folder))
        features.domain_model.cache_clear()
        yield folder
    features.domain_model.cache_clear()


def test_domain_classifier_of_digits_is_trained_cached_and_read_back(cache: Path) -> None:
    model = features.domain_model("digits")
    weights, record = features.domain_paths("digits")
    assert weights.is_relative_to(cache) and weights.is_file() and record.is_file()
    info = json.loads(record.read_text())
    assert info["sha256"] == model.sha256 == features.weights_sha256(torch.load(weights, weights_only=True))
    assert model.name == f"domain:digits:{model.sha256[:8]}"
    assert 0.9 <= model.test_accuracy <= 1.0  # 8x8 digits: a small CNN gets ~97%
    assert info["test_accuracy"] == model.test_accuracy
    features.domain_model.cache_clear()
    again = features.domain_model("digits")  # from the file this time
    assert again.sha256 == model.sha256 and again.test_accuracy == model.test_accuracy
    data = load_dataset("digits")
    space = scoring.feature_space("domain", data)
    embedded = space.embed(data.test.flatten(1))  # flat rows, as an MLP generator gives them
    assert embedded.shape == (data.test.shape[0], features.DOMAIN_FEATURES)
    with torch.no_grad():
        assert torch.equal(embedded, again.network.features(data.test))


def test_domain_classifier_training_is_deterministic(monkeypatch: pytest.MonkeyPatch) -> None:
    from gansweep.engine.data import image_labels

    monkeypatch.setattr(features, "DOMAIN_STEPS", 30)  # the first steps decide it: cheaper
    data = load_dataset("digits")
    labels = image_labels("digits")[0]
    first = features.train_domain_classifier(data.train, labels, 10).state_dict()
    torch.manual_seed(123)  # the global stream does not matter
    second = features.train_domain_classifier(data.train, labels, 10).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert features.weights_sha256(first) == features.weights_sha256(second)
    other = features.train_domain_classifier(data.train[1:], labels[1:], 10).state_dict()
    assert not all(torch.equal(first[k], other[k]) for k in first)  # the data decide it


def test_a_tampered_cache_file_is_refused(cache: Path) -> None:
    features.domain_model("digits")
    weights, _ = features.domain_paths("digits")
    original = weights.read_bytes()
    middle = len(original) // 2
    weights.write_bytes(original[:middle] + bytes([original[middle] ^ 0xFF]) + original[middle + 1 :])
    features.domain_model.cache_clear()
    try:
        with pytest.raises(DataError, match="delete (both files|it and its .json)"):
            features.domain_model("digits")
    finally:
        weights.write_bytes(original)
        features.domain_model.cache_clear()


def test_other_weights_in_the_cache_file_are_refused(cache: Path) -> None:
    model = features.domain_model("digits")
    weights, _ = features.domain_paths("digits")
    original = weights.read_bytes()
    state = model.network.state_dict()
    torch.save({k: v + 1e-3 if k.endswith("bias") else v for k, v in state.items()}, weights)  # a readable file
    features.domain_model.cache_clear()
    try:
        with pytest.raises(DataError, match="holds weights with SHA-256 .* delete both files"):
            features.domain_model("digits")
    finally:
        weights.write_bytes(original)
        features.domain_model.cache_clear()


def test_points_space_of_a_2d_set() -> None:
    data = load_dataset("circle", n_train=100)
    space = scoring.feature_space("domain", data)
    assert space.name == "points:circle"
    assert torch.equal(space.embed(data.test), data.test)


# ---------------------------------------------------------------------------- Inception


@pytest.fixture(scope="module")
def random_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    plain = tmp_path_factory.mktemp("inception") / "weights.pth"
    torch.save(inception.inception_network().state_dict(), plain)
    named = plain.with_name(f"inception_random-{features.sha256_of(plain)[:8]}.pth")
    plain.rename(named)
    return named


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GANSWEEP_OFFLINE", "1")
    monkeypatch.delenv(inception.ENV_WEIGHTS, raising=False)
    monkeypatch.delenv(inception.ENV_SHA256, raising=False)
    previous = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    inception._cached.cache_clear()
    yield tmp_path / "hub"
    torch.hub.set_dir(previous)
    inception._cached.cache_clear()


def test_inception_checksum_mismatch_is_an_error(random_weights: Path, hub: Path, monkeypatch) -> None:
    monkeypatch.setenv(inception.ENV_WEIGHTS, str(random_weights))
    monkeypatch.setenv(inception.ENV_SHA256, "0" * 64)
    with pytest.raises(DataError, match="does not match the expected 0000"):
        inception.inception_space(torch.device("cpu"))
    # the hub's file name carries the digest's start; a wrong one is refused too
    wrong = hub / "checkpoints" / inception.HUB_FILE
    wrong.parent.mkdir(parents=True)
    wrong.write_bytes(random_weights.read_bytes())
    monkeypatch.delenv(inception.ENV_WEIGHTS)
    monkeypatch.delenv(inception.ENV_SHA256)
    with pytest.raises(DataError, match=f"{wrong}: SHA-256 .* expected 0cc3c7bd"):
        inception.inception_space(torch.device("cpu"))


def test_inception_weights_without_a_checksum_are_refused(random_weights: Path, hub: Path, tmp_path, monkeypatch) -> None:
    bare = tmp_path / "weights.pth"
    bare.write_bytes(random_weights.read_bytes())
    monkeypatch.setenv(inception.ENV_WEIGHTS, str(bare))
    with pytest.raises(ConfigError, match="no checksum"):
        inception.inception_space(torch.device("cpu"))


def test_missing_inception_offline_names_every_place_looked(hub: Path, monkeypatch) -> None:
    monkeypatch.setenv(inception.ENV_WEIGHTS, str(hub / "nowhere.pth"))
    with pytest.raises(DataError) as caught:
        inception.inception_space(torch.device("cpu"))
    text = str(caught.value)
    assert f"{hub / 'nowhere.pth'} (no such file)" in text
    assert str(hub / "checkpoints" / inception.HUB_FILE) in text
    assert "download skipped: GANSWEEP_OFFLINE is set" in text
    assert not (hub / "checkpoints" / inception.HUB_FILE).exists()  # nothing was fetched


def test_torchvisions_weights_file_is_checked_against_its_whole_pinned_sha256(hub: Path, monkeypatch) -> None:
    """A file named as torchvision's is held to the whole digest, not to the 8 hex digits of
    its name: a fake one whose digest starts with its name's digits is still refused."""
    pinned = inception.PINNED_SHA256[inception.HUB_FILE]
    assert re.fullmatch("[0-9a-f]{64}", pinned)
    assert pinned.startswith(inception.HUB_FILE.rsplit("-", 1)[1].split(".")[0])  # torch.hub's prefix
    assert inception.expected_sha256(hub / inception.HUB_FILE) == pinned
    fake = hub / "checkpoints" / "fake.pth"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"not inception weights")
    digest = features.sha256_of(fake)
    named = fake.rename(fake.with_name(f"inception_v3_fake-{digest[:8]}.pth"))
    assert inception.check_sha256(named) == digest  # the name's prefix alone lets it through
    other = digest[:8] + ("0" if digest[8] != "0" else "1") + digest[9:]  # same start, another digest
    monkeypatch.setitem(inception.PINNED_SHA256, named.name, other)
    with pytest.raises(DataError, match=f"SHA-256 {digest} does not match the expected {other}"):
        inception.check_sha256(named)
    monkeypatch.setitem(inception.PINNED_SHA256, named.name, digest)
    assert inception.check_sha256(named) == digest
    monkeypatch.setenv(inception.ENV_SHA256, digest[:8])  # the user's own checksum still wins
    monkeypatch.setitem(inception.PINNED_SHA256, named.name, other)
    assert inception.check_sha256(named) == digest


def test_a_download_is_checked_against_the_whole_pinned_sha256(hub: Path, monkeypatch) -> None:
    asked = {}

    def download(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
        asked.update(url=url, hash_prefix=hash_prefix)
        raise OSError("no network in tests")

    monkeypatch.delenv("GANSWEEP_OFFLINE")
    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    with pytest.raises(DataError, match="no network in tests"):
        inception.find_weights()
    assert asked == {"url": inception.URL, "hash_prefix": inception.PINNED_SHA256[inception.HUB_FILE]}


@pytest.fixture
def pytorch_fid_network(monkeypatch: pytest.MonkeyPatch):
    """A factory: pytorch-fid's InceptionV3 (its resize_input + normalize_input pipeline,
    its pool3 block layout) around the given torchvision network instead of downloaded
    weights (its constructor with use_fid_inception=False asks _inception_v3 for one)."""
    from pytorch_fid import inception as reference

    def build(network: torch.nn.Module) -> torch.nn.Module:
        monkeypatch.setattr(reference, "_inception_v3", lambda **kwargs: network)
        return reference.InceptionV3([3], resize_input=True, normalize_input=True, use_fid_inception=False).eval()

    return build


def test_inception_pipeline_equals_pytorch_fids(random_weights: Path, hub: Path, monkeypatch, pytorch_fid_network) -> None:
    """On the same images and weights (random: no download), the network's input and its pool3
    features through gansweep's pipeline equal pytorch-fid's (bilinear to 299x299, then
    [-1, 1]), for grey digits and CIFAR-sized colour images; one image each suffices."""
    monkeypatch.setenv(inception.ENV_WEIGHTS, str(random_weights))
    for shape in ((1, 28, 28), (3, 32, 32)):
        space = inception.inception_space(torch.device("cpu"), shape)
        network, digest = inception._cached(str(random_weights), "cpu")  # the space's own network
        reference = pytorch_fid_network(network)
        seen: list[torch.Tensor] = []
        hook = network.Conv2d_1a_3x3.register_forward_pre_hook(lambda module, args, seen=seen: seen.append(args[0]))
        image = torch.rand(1, *shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            want = reference(image.expand(-1, 3, -1, -1))[0].flatten(1)  # pytorch-fid takes RGB: grey repeated
        hook.remove()
        got = space.embed(image.flatten(1))  # flat rows, as an MLP generator gives them
        assert space.name == f"inception:{digest[:8]}" == f"inception:{features.sha256_of(random_weights)[:8]}"
        torch.testing.assert_close(inception.to_inception_input(image), seen[0], rtol=0, atol=1e-6)
        assert want.shape == got.shape == (1, 2048)
        # relative: a randomly initialised network's pool3 values are ~1e-8 (each default-initialised
        # layer shrinks its input); the ImageNet-normalised input of old changed them by ~20 times that
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * float(want.abs().max()))

"""Frozen-feature mode: extraction and the on-disk feature cache (and a head trained on it)."""

import copy
import math

import pytest
import torch
from torch import nn

from cifar100.config import ModelConfig, TrainConfig
from cifar100.data.augment import to_float_nchw
from cifar100.data.tensors import ImageSet
from cifar100.engine.features import (
    FeatureCache,
    cached_features,
    extract_features,
    state_digest,
)
from cifar100.engine.head_training import head_logits, train_head_epoch
from cifar100.engine.optim import build_optimizer
from cifar100.models.head import Classifier

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: a second thread only adds barrier waits, which dominate on a busy machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyBackbone(nn.Module):
    """A stand-in with batch norm, so eval-mode extraction is observable."""

    out_features = 8

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x)))


def _data(n=12, size=8, classes=4, seed=0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)
    return ImageSet(images, torch.arange(n) % classes, [f"c{i}" for i in range(classes)])


def _model(seed=0) -> Classifier:
    torch.manual_seed(seed)
    model = Classifier(TinyBackbone(), num_classes=4, resize=2, head_units=16)
    model.train()
    with torch.no_grad():  # move batch norm's moving statistics off their initial values
        model(to_float_nchw(_data(n=16, seed=99).images))
    return model


def _count_calls(module: nn.Module) -> list[int]:
    calls = [0]
    module.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def _key(model, data, split="train"):
    """The unflipped entry's key, as cached_features makes it."""
    pixels = data.fingerprint(labels=False)  # features depend on the pixels alone
    return FeatureCache.key(
        "resnet50v2", "none", 2, model.preprocess.mode, data.image_size, pixels,
        state_digest(model.backbone), False, split, compute="cpu/float32",
    )  # fmt: skip


def _cached(model, data, cache, flip=False, split="train"):
    cfg = ModelConfig(weights="none", resize=2)
    return cached_features(model, data, split, cache, cfg, CPU, batch_size=5, flip=flip)


def test_extract_features_equal_model_features_in_eval_mode():
    model, data = _model(), _data()
    x = to_float_nchw(data.images)
    feats = extract_features(model, data.images, CPU, batch_size=5)  # 5 does not divide 12
    flipped = extract_features(model, data.images, CPU, batch_size=5, flip=True)
    assert model.training  # the caller's mode is restored
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(feats, model.features(x))
        torch.testing.assert_close(flipped, model.features(x.flip(3)))
    assert feats.dtype == torch.float32 and feats.shape == (12, 8)
    assert not torch.allclose(feats, flipped)


def test_extract_features_of_resnet50v2():
    from cifar100.models.registry import build_model

    model = build_model(ModelConfig(weights="none", resize=1), num_classes=10)
    images = _data(n=3, size=32).images
    feats = extract_features(model, images, CPU, batch_size=2)
    with torch.no_grad():
        expected = model.eval().features(to_float_nchw(images))
    assert feats.shape == (3, 2048)
    torch.testing.assert_close(feats, expected)


def test_cache_serves_the_second_call_without_the_backbone(tmp_path):
    model, data, cache = _model(), _data(), FeatureCache(tmp_path)
    calls = _count_calls(model.backbone)
    first = _cached(model, data, cache, flip=True)
    assert calls[0] == 2 * math.ceil(12 / 5)  # plain and mirrored halves
    assert first.shape == (24, 8)
    torch.testing.assert_close(first[:12], extract_features(model, data.images, CPU))
    torch.testing.assert_close(first[12:], extract_features(model, data.images, CPU, flip=True))
    calls[0] = 0
    assert torch.equal(_cached(model, data, cache, flip=True), first)
    assert torch.equal(_cached(model, data, cache, flip=False), first[:12])  # the plain half
    assert calls[0] == 0
    assert len(list((tmp_path / "features").iterdir())) == 2


def test_cache_keys_differ_for_everything_the_features_depend_on():
    base = dict(
        backbone="resnet50v2",
        weights="imagenet",
        resize=7,
        preprocess="tf",
        image_size=32,
        data_fingerprint="aaaa",
        backbone_state_digest="bbbb",
        flip=False,
        split="train",
    )
    changes = dict(
        backbone="efficientnet_lite0",
        weights="none",
        resize=1,
        preprocess="torch",
        image_size=64,
        data_fingerprint="aaab",
        backbone_state_digest="bbbc",
        flip=True,
        split="test",
    )
    keys = {FeatureCache.key(**base)} | {
        FeatureCache.key(**{**base, k: v}) for k, v in changes.items()
    }
    keys.add(FeatureCache.key(**base, compute="cuda/bfloat16"))
    assert len(keys) == len(changes) + 2
    assert FeatureCache.key(**base) == FeatureCache.key(**base)


def test_state_digest_follows_the_values_not_the_instance():
    backbone = TinyBackbone()
    twin = copy.deepcopy(backbone)
    assert state_digest(backbone) == state_digest(twin)
    with torch.no_grad():
        twin.conv.weight[0, 0, 0, 0] += 1e-3
    assert state_digest(backbone) != state_digest(twin)
    twin = copy.deepcopy(backbone)
    twin.bn.running_mean += 1.0  # a buffer changes the features too
    assert state_digest(backbone) != state_digest(twin)


def test_other_data_or_weights_are_computed_afresh(tmp_path):
    model, cache = _model(), FeatureCache(tmp_path)
    calls = _count_calls(model.backbone)
    _cached(model, _data(seed=0), cache)
    _cached(model, _data(seed=1), cache)
    with torch.no_grad():
        model.backbone.conv.bias += 0.5
    _cached(model, _data(seed=0), cache)
    assert calls[0] == 3 * math.ceil(12 / 5)
    assert len(list((tmp_path / "features").iterdir())) == 3


def _tamper(path):
    entry = torch.load(path, weights_only=True)
    entry["features"][0, 0] += 1.0
    torch.save(entry, path)


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b"not a torch file"),
        lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
        _tamper,
    ],
    ids=["garbage", "truncated", "tampered"],
)
def test_a_damaged_cache_file_warns_once_and_is_rebuilt(tmp_path, capsys, damage):
    model, data, cache = _model(), _data(), FeatureCache(tmp_path)
    good = _cached(model, data, cache)
    (path,) = (tmp_path / "features").iterdir()
    damage(path)
    capsys.readouterr()
    calls = _count_calls(model.backbone)
    again = _cached(model, data, cache)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("warning: feature cache") and "damaged" in err[0]
    assert calls[0] > 0 and torch.equal(again, good)
    assert path.is_file()  # rebuilt, and good now
    assert torch.equal(_cached(model, data, cache), good)
    assert capsys.readouterr().err == ""


def test_cache_writes_atomically(tmp_path, monkeypatch):
    cache = FeatureCache(tmp_path)
    good = torch.randn(6, 4)
    cache.save("k", good)
    assert [p.name for p in (tmp_path / "features").iterdir()] == ["k.pt"]

    def crash(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"half a file")
        raise RuntimeError("killed mid-write")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(RuntimeError):
        cache.save("k", torch.zeros(6, 4))
    with pytest.raises(RuntimeError):
        cache.save("new", torch.zeros(6, 4))
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "features").iterdir()] == ["k.pt"]  # no temp files
    assert torch.equal(cache.load("k"), good)
    assert cache.load("new") is None


def test_a_head_trained_on_features_is_the_full_models_head(tmp_path):
    model, data = _model(), _data(n=40)
    backbone_before = state_digest(model.backbone)
    feats = _cached(model, data, FeatureCache(tmp_path), flip=True)
    labels = data.labels.repeat(2)
    optimizer = build_optimizer([model.head], TrainConfig(head_lr=1e-2), "frozen")
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        train_head_epoch(model.head, feats, labels, optimizer, 16, 0.0, gen)
    assert state_digest(model.backbone) == backbone_before

    model.eval()
    x = to_float_nchw(data.images)
    with torch.no_grad():
        logits = model(x)
    torch.testing.assert_close(logits, head_logits(model.head, feats[:40]))
    # The state_dict is a normal full model's: a fresh Classifier gives the same logits.
    fresh = Classifier(TinyBackbone(), num_classes=4, resize=2, head_units=16)
    fresh.load_state_dict(model.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), logits)


def test_a_stopped_extraction_resumes_from_its_finished_parts(tmp_path, monkeypatch):
    from cifar100.engine import features

    monkeypatch.setattr(features, "PART_IMAGES", 10)  # batches of 5: parts of 10, 10 and 3
    model, data = _model(), _data(n=23)
    reference = extract_features(model, data.images, CPU, batch_size=5)
    cache = FeatureCache(tmp_path)
    forward, calls = model.backbone.forward, [0]

    def stops_at_the_fifth_batch(x):
        calls[0] += 1
        if calls[0] == 5:  # the first batch of the third part
            raise KeyboardInterrupt
        return forward(x)

    monkeypatch.setattr(model.backbone, "forward", stops_at_the_fifth_batch)
    with pytest.raises(KeyboardInterrupt):
        _cached(model, data, cache)
    assert len(list(cache.dir.glob("*-part*of3.pt"))) == 2  # the two finished parts
    calls[0] = -100  # no more stops
    feats = _cached(model, data, cache)
    assert calls[0] == -99  # one batch: only the unfinished part was computed
    assert torch.equal(feats, reference)  # whole batches: exactly the one-go result
    assert [p.name for p in cache.dir.iterdir()] == [cache.path(_key(model, data)).name]
    assert torch.equal(_cached(model, data, cache), reference)


def test_relabelled_images_keep_their_cached_features(tmp_path, monkeypatch):
    """Features depend on the pixels alone: an audit's flipped or corrected labels (or a
    class folder renamed) reuse the cache instead of extracting again."""
    import cifar100.engine.features as features

    model = _model()
    data = _data()
    cache = FeatureCache(tmp_path)
    first = _cached(model, data, cache)
    relabelled = ImageSet(data.images, data.labels.flip(0), [c + "!" for c in data.classes])

    def never(*args, **kwargs):
        raise AssertionError("extracted again")

    monkeypatch.setattr(features, "extract_in_parts", never)
    assert torch.equal(_cached(model, relabelled, cache), first)

"""Unit tests of the engine's parts: augmentation, device batches, schedule, checkpoints."""

import pytest
import torch

from cifar100.data.augment import random_crop, random_flip, to_float_nchw
from cifar100.data.loader import DeviceBatches
from cifar100.data.tensors import ImageSet, split_holdout
from cifar100.engine.optim import param_groups
from cifar100.errors import CheckpointError
from cifar100.runtime.checkpoint import load_checkpoint, resolve_checkpoint, save_checkpoint
from cifar100.schedule import finetune_lr


def _set(n=20, size=8, classes=4):
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, size, size, 3), dtype=torch.uint8, generator=g)
    return ImageSet(images, torch.arange(n) % classes, [f"c{i}" for i in range(classes)])


def test_to_float_nchw_keeps_pixel_values():
    data = _set()
    x = to_float_nchw(data.images)
    assert x.shape == (20, 3, 8, 8) and x.dtype == torch.float32
    assert torch.equal(x[3, 1], data.images[3, :, :, 1].float())


def test_random_crop_is_a_shifted_window_of_the_padded_image():
    x = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    gen = torch.Generator().manual_seed(1)
    out = random_crop(x, 2, gen)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):  # each output is exactly one 6x6 window of its padded input
        windows = [padded[i, :, a : a + 6, b : b + 6] for a in range(5) for b in range(5)]
        assert any(torch.equal(out[i], w) for w in windows)
    assert torch.equal(random_crop(x, 0, gen), x)


def test_random_flip_flips_about_half_exactly():
    x = torch.randn(400, 3, 4, 4)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(o, i.flip(2)) for o, i in zip(out, x)])
    same = torch.tensor([torch.equal(o, i) for o, i in zip(out, x)])
    assert bool((flipped | same).all()) and 150 < int(flipped.sum()) < 250


def test_device_batches_cover_each_image_once_and_repeat_per_epoch():
    data = _set(n=23)
    b = DeviceBatches(data, torch.device("cpu"), batch_size=5, shuffle=True, seed=3)
    assert len(b) == 5
    first = torch.cat([y for _, y in b.epoch(0)])
    assert len(first) == 23
    again = torch.cat([x.flatten(1)[:, 0] for x, _ in b.epoch(0)])
    other = torch.cat([x.flatten(1)[:, 0] for x, _ in b.epoch(1)])
    assert torch.equal(again, torch.cat([x.flatten(1)[:, 0] for x, _ in b.epoch(0)]))
    assert not torch.equal(again, other)
    dropped = DeviceBatches(data, torch.device("cpu"), 5, shuffle=True, drop_last=True)
    assert len(dropped) == 4 and all(len(y) == 5 for _, y in dropped.epoch(0))


def test_split_holdout_is_stratified_and_seeded():
    data = _set(n=40)
    train, val = split_holdout(data, 0.25, seed=0)
    assert len(train) + len(val) == 40
    assert torch.bincount(val.labels).tolist() == [2, 2, 2, 2]
    again, _ = split_holdout(data, 0.25, seed=0)
    assert torch.equal(train.images, again.images)


def test_schedule_warms_up_then_decays_to_zero():
    lrs = [finetune_lr(s, 100, 10, 0.1) for s in range(100)]
    assert lrs[0] == pytest.approx(0.01) and lrs[9] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))
    assert finetune_lr(100, 100, 10, 0.1) == pytest.approx(0.0)


def test_no_weight_decay_on_norms_and_biases():
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    decay, no_decay = param_groups([m], 5e-4)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 3])]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 3


def test_checkpoint_round_trip_and_errors(tmp_path):
    path = tmp_path / "run" / "last.pt"
    save_checkpoint({"model": {"w": torch.ones(2)}, "classes": ["a"], "epoch": 3}, path)
    state = load_checkpoint(path)
    assert state["epoch"] == 3 and torch.equal(state["model"]["w"], torch.ones(2))
    assert resolve_checkpoint(tmp_path / "run") == path
    assert not list(path.parent.glob(".*tmp"))  # no temporary file left behind

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_checkpoint(tmp_path / "junk.pt")
    path.write_bytes(path.read_bytes()[:1000])  # cut short, as a full disk might
    with pytest.raises(CheckpointError) as cut:
        load_checkpoint(path)
    message = str(cut.value)
    assert message.startswith(f"{path}: damaged")
    assert message.endswith("best.pt may still be intact")
    assert len(message) < 400 and "\n" not in message
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a cifar100 checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="no best.pt"):
        resolve_checkpoint(tmp_path / "run", "best")


def test_checkpoint_loading_never_runs_code(tmp_path):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    torch.save({"format": "cifar100-checkpoint", "x": Evil()}, path, pickle_module=pickle)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_deterministic_mode_switches_torch_to_deterministic_kernels():
    from cifar100.engine.seeding import seed_everything

    try:
        seed_everything(3, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        a = torch.rand(3)
        seed_everything(3, deterministic=True)
        assert torch.equal(a, torch.rand(3))
    finally:
        torch.use_deterministic_algorithms(False)


def test_ema_trails_the_weights_and_ramps_its_decay():
    from cifar100.engine.ema import ModelEMA

    model = torch.nn.Linear(2, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = ModelEMA(model, decay=0.99)
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update(model)  # decay ramps: min(0.99, 2/11)
    assert torch.allclose(ema.module.weight, torch.full((1, 2), 1 - 2 / 11))
    assert not ema.module.weight.requires_grad


def test_cuda_backends_are_tuned_unless_deterministic(monkeypatch):
    from cifar100.runtime.device import tune_backends

    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    before = torch.get_float32_matmul_precision()
    try:
        tune_backends(torch.device("cpu"))  # CPU numerics stay exactly as they were
        tune_backends(torch.device("cuda"), deterministic=True)
        assert not torch.backends.cudnn.benchmark
        assert torch.get_float32_matmul_precision() == before
        tune_backends(torch.device("cuda"))
        assert torch.backends.cudnn.benchmark
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)

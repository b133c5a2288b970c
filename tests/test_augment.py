"""Batch augmentation: policy ops, random erasing, mixup/cutmix, determinism, speed (printed)."""

import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from cifar100.data.augment import augment_batch, random_crop, random_erasing, random_flip
from cifar100.data.mixing import mix_batch, sample_beta, smooth_one_hot
from cifar100.data.policies import (
    FILL,
    NUM_BINS,
    OPS,
    apply_ops,
    autocontrast,
    equalize,
    magnitudes,
    posterize,
    rand_augment,
    solarize,
)


def _images(n: int = 6, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g).float()


def _op(name: str, m: float, x: torch.Tensor) -> torch.Tensor:
    """Apply OPS `name` with magnitude m to every image of x."""
    n = x.shape[0]
    return apply_ops(x, torch.full((n,), OPS.index(name)), torch.full((n,), float(m)))


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["trivial", "randaugment"])
@pytest.mark.parametrize("name", OPS)
def test_each_op_keeps_shape_dtype_range_and_both_paths_agree(name, policy):
    x = _images(8)
    g = torch.Generator().manual_seed(1)
    op = torch.full((8,), OPS.index(name))
    bins = torch.randint(0, NUM_BINS, (8,), generator=g)
    negate = torch.randint(0, 2, (8,), generator=g).bool()
    m = magnitudes(policy, op, bins, negate, 16, 16)
    out = apply_ops(x, op, m, subset=True)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= 255
    torch.testing.assert_close(apply_ops(x, op, m, subset=False), out)


@pytest.mark.parametrize(
    "name",
    ["shear_x", "shear_y", "translate_x", "translate_y", "rotate"]
    + ["brightness", "color", "contrast", "sharpness", "posterize"],
)
def test_magnitude_bin_zero_is_identity(name):
    x = _images(4)
    op = torch.full((4,), OPS.index(name))
    m = magnitudes("trivial", op, torch.zeros(4, dtype=torch.long), torch.ones(4).bool(), 16, 16)
    assert torch.equal(apply_ops(x, op, m), x)


def test_magnitude_tables_follow_torchvision():
    def at(policy, name, b, size=32):
        op = torch.tensor([OPS.index(name)])
        return magnitudes(policy, op, torch.tensor([b]), torch.tensor([False]), size, size).item()

    assert at("trivial", "rotate", 30) == pytest.approx(135.0)
    assert at("trivial", "translate_x", 30) == pytest.approx(32.0)
    assert at("trivial", "shear_y", 15) == pytest.approx(0.495)
    assert at("trivial", "posterize", 30) == pytest.approx(2.0)
    assert at("trivial", "solarize", 30) == pytest.approx(0.0)
    assert at("randaugment", "rotate", 9) == pytest.approx(9.0)
    assert at("randaugment", "translate_y", 30) == pytest.approx(150 / 331 * 32)
    assert at("randaugment", "brightness", 30) == pytest.approx(0.9)
    assert at("randaugment", "posterize", 30) == pytest.approx(4.0)
    negated = magnitudes(
        "trivial", torch.tensor([OPS.index("rotate"), OPS.index("solarize")]),
        torch.tensor([30, 30]), torch.tensor([True, True]), 32, 32,
    )  # fmt: skip
    assert negated.tolist() == [-135.0, 0.0]  # solarize is unsigned


def test_solarize_and_posterize_known_values():
    x = torch.tensor([0.0, 100, 127, 128, 200, 255]).view(1, 1, 1, 6)
    assert solarize(x, torch.tensor([128.0])).flatten().tolist() == [0, 100, 127, 127, 55, 0]
    y = torch.tensor([0.0, 37, 63, 64, 128, 200, 255]).view(1, 1, 1, 7)
    assert posterize(y, torch.tensor([2.0])).flatten().tolist() == [0, 0, 0, 64, 128, 192, 192]
    assert posterize(y, torch.tensor([4.0])).flatten().tolist() == [0, 32, 48, 64, 128, 192, 240]
    assert torch.equal(posterize(y, torch.tensor([8.0])), y)


def test_equalize_two_levels_and_matches_pil():
    two = torch.full((1, 3, 32, 32), 50.0)
    two[:, :, 16:] = 200.0
    out = equalize(two)
    assert (out[:, :, :16] == 0).all() and (out[:, :, 16:] == 255).all()
    g = torch.Generator().manual_seed(3)
    # Narrow level ranges and a 2-level image with too few pixels (PIL leaves that unchanged).
    batch = torch.randint(40, 120, (4, 3, 16, 16), generator=g).float()
    batch[1, 1] = torch.randint(0, 256, (16, 16), generator=g).float()
    batch[2, 0] = 7.0
    batch[2, 0, :2] = 9.0
    ours = equalize(batch)
    for img, got in zip(batch, ours):
        pil = Image.fromarray(img.permute(1, 2, 0).to(torch.uint8).numpy())
        want = torch.from_numpy(np.array(ImageOps.equalize(pil))).permute(2, 0, 1).float()
        assert torch.equal(got, want)


def test_autocontrast_stretches_and_leaves_flat_channels():
    x = torch.zeros(1, 3, 4, 4)
    x[0, 0] = torch.linspace(50, 150, 16).view(4, 4)
    x[0, 1] = 77.0
    out = autocontrast(x)
    assert out[0, 0].min() == 0 and out[0, 0].max() == pytest.approx(255)
    assert (out[0, 1] == 77).all() and (out[0, 2] == 0).all()


@pytest.mark.parametrize("size", [8, 9])
def test_rotate_90_equals_rot90(size):
    x = _images(3, size)
    assert torch.equal(_op("rotate", 90.0, x), torch.rot90(x, 1, (2, 3)))  # counter-clockwise
    assert torch.equal(_op("rotate", -90.0, x), torch.rot90(x, -1, (2, 3)))


def _non_square(n: int = 2) -> torch.Tensor:
    return _images(n, 12)[:, :, :8].contiguous()  # 8 x 12: exercises the aspect scaling


def test_translate_shifts_by_whole_pixels_with_fill():
    x = _non_square()
    right = _op("translate_x", 3.7, x)  # torchvision truncates to int(3.7) = 3
    assert torch.equal(right[..., 3:], x[..., :-3]) and (right[..., :3] == FILL).all()
    up = _op("translate_y", -2.0, x)
    assert torch.equal(up[:, :, :-2], x[:, :, 2:]) and (up[:, :, -2:] == FILL).all()


def test_shear_pivots_on_the_top_left_corner():
    x = _non_square(1)
    # Output (y, c) samples source column c + 0.5 * (y + 0.5) (pixel centres), rounded.
    out = _op("shear_x", 0.5, x)
    for y in range(8):
        s = round(0.5 * (y + 0.5))
        assert torch.equal(out[0, :, y, : 12 - s], x[0, :, y, s:]), y
    out = _op("shear_y", 0.5, x)
    for c in range(12):
        s = round(0.5 * (c + 0.5))
        assert torch.equal(out[0, :, : 8 - s, c], x[0, :, s:, c]), c
    assert torch.equal(_op("rotate", 180.0, x), x.flip(2, 3))


@pytest.mark.parametrize("name", OPS)
def test_batch_consistency(name):
    """Each image's result equals the op applied to that image alone."""
    x = _images(5)
    op = torch.full((5,), OPS.index(name))
    m = magnitudes(
        "trivial", op, torch.arange(3, 28, 5), torch.tensor([0, 1, 0, 1, 1]).bool(), 16, 16
    )
    batch = apply_ops(x, op, m)
    for i in range(5):
        torch.testing.assert_close(
            batch[i : i + 1], apply_ops(x[i : i + 1], op[i : i + 1], m[i : i + 1])
        )


def test_mixed_ops_in_one_batch_match_one_by_one():
    x = _images(28)
    op = torch.arange(28) % len(OPS)
    m = magnitudes("trivial", op, torch.arange(28) % NUM_BINS, torch.arange(28) % 3 == 0, 16, 16)
    batch = apply_ops(x, op, m)
    torch.testing.assert_close(batch, apply_ops(x, op, m, subset=False))
    for i in range(28):
        torch.testing.assert_close(
            batch[i : i + 1], apply_ops(x[i : i + 1], op[i : i + 1], m[i : i + 1])
        )


@pytest.mark.parametrize("policy", ["none", "trivial", "randaugment"])
def test_augment_batch_is_deterministic_and_in_range(policy):
    x = _images(16, 32)

    def run(seed):
        g = torch.Generator().manual_seed(seed)
        return augment_batch(x, 4, True, g, policy=policy, magnitude=12, ops=3, erasing=0.5)

    a = run(0)
    assert torch.equal(a, run(0)) and not torch.equal(a, run(1))
    assert a.shape == x.shape and a.min() >= 0 and a.max() <= 255


def test_augment_batch_positional_call_is_crop_then_flip():
    x = _images(8, 32)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    want = random_flip(random_crop(x, 4, g1), g1)
    assert torch.equal(augment_batch(x, 4, True, g2), want)


def test_augment_batch_keeps_channels_last_and_rejects_unknown_policy():
    x = _images(4, 32).contiguous(memory_format=torch.channels_last)
    out = augment_batch(x, 4, True, torch.Generator(), policy="trivial", erasing=0.5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError):
        augment_batch(x, 4, True, torch.Generator(), policy="autoaugment")
    with pytest.raises(ValueError):
        rand_augment(x, torch.Generator(), magnitude=31)


def test_random_erasing_identity_at_zero_and_one_rectangle_at_one():
    x = _images(32, 32)
    assert torch.equal(random_erasing(x, 0.0, torch.Generator()), x)
    # NaN images show exactly which pixels were erased (the noise is finite).
    nan = torch.full((64, 3, 32, 32), float("nan"))
    erased = random_erasing(nan, 1.0, torch.Generator().manual_seed(0)).isfinite()
    assert torch.equal(erased, erased[:, :1].expand_as(erased))  # all channels alike
    for mask in erased[:, 0]:
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert mask.sum() == height * width  # one filled rectangle
        assert 0.01 <= mask.sum() / 1024 <= 0.36
    assert not torch.equal(random_erasing(x, 1.0, torch.Generator()), x)
    changed = (random_erasing(x, 1.0, torch.Generator()) != x).flatten(1).any(1)
    assert changed.all()


def _distinct_batch(n: int = 8, size: int = 16):
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, size, size) * 10
    return x.contiguous(), torch.arange(n)


def test_mixup_targets_are_lambda_and_one_minus_lambda():
    x, y = _distinct_batch()
    xm, t = mix_batch(x, y, 10, 0.4, 0.0, 1.0, 0.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(t.sum(1), torch.ones(8))
    lam = t[0, 0].item()
    assert 0 < lam < 1
    for i in range(8):
        assert t[i, i].item() == pytest.approx(lam) and t[i, 7 - i].item() == pytest.approx(1 - lam)
    torch.testing.assert_close(xm, lam * x + (1 - lam) * x.flip(0))


def test_cutmix_pixel_fraction_equals_lambda():
    x, y = _distinct_batch(8, 32)
    for seed in range(5):
        xm, t = mix_batch(x, y, 8, 0.0, 1.0, 1.0, 0.0, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(t.sum(1), torch.ones(8))
        for i in range(8):
            from_partner = (xm[i] == x[7 - i]).float().mean().item()
            assert (xm[i] == x[i]).float().mean().item() == pytest.approx(1 - from_partner)
            assert t[i, i].item() == pytest.approx(1 - from_partner)


def test_both_alphas_pick_mixup_or_cutmix():
    x, y = _distinct_batch()
    kinds = set()
    for seed in range(30):
        xm, _ = mix_batch(x, y, 8, 1.0, 1.0, 1.0, 0.0, torch.Generator().manual_seed(seed))
        levels = torch.isin(xm, x).all().item()  # cutmix only moves pixels
        kinds.add("cutmix" if levels else "mixup")
    assert kinds == {"cutmix", "mixup"}


def test_unmixed_batch_gives_smoothed_targets_and_same_loss():
    x, y = _distinct_batch()
    logits = torch.randn(8, 10, generator=torch.Generator().manual_seed(0))
    for mix_prob, mixup in ((0.0, 0.4), (1.0, 0.0)):
        xm, t = mix_batch(x, y, 10, mixup, 0.0, mix_prob, 0.1, torch.Generator())
        assert torch.equal(xm, x)
        torch.testing.assert_close(t, smooth_one_hot(y, 10, 0.1))
        torch.testing.assert_close(
            F.cross_entropy(logits, t), F.cross_entropy(logits, y, label_smoothing=0.1)
        )
    _, t = mix_batch(x, y, 10, 0.4, 1.0, 1.0, 0.1, torch.Generator().manual_seed(2))
    torch.testing.assert_close(t.sum(1), torch.ones(8))
    assert t.min().item() == pytest.approx(0.01)


def test_mix_batch_is_deterministic():
    x, y = _distinct_batch()

    def run(seed):
        return mix_batch(x, y, 8, 0.4, 1.0, 0.8, 0.1, torch.Generator().manual_seed(seed))

    for seed in range(4):
        a, b = run(seed), run(seed)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("alpha", [0.2, 1.0, 3.0])
def test_sample_beta_moments(alpha):
    s = sample_beta(alpha, 20000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert ((s >= 0) & (s <= 1)).all()
    assert s.mean().item() == pytest.approx(0.5, abs=0.01)
    assert s.var().item() == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.06)


def test_benchmark_trivial_policy_on_cpu(capsys):
    """Printed, not asserted: ms per 256x3x32x32 batch, against crop+flip in the same run."""
    x = _images(256, 32)
    g = torch.Generator().manual_seed(0)
    variants = {
        "crop+flip": {},
        "+trivial": {"policy": "trivial"},
        "+randaugment(2 ops)+erasing": {"policy": "randaugment", "erasing": 0.25},
    }
    best = dict.fromkeys(variants, float("inf"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread suffers least from a shared, oversubscribed machine
    try:
        for _ in range(6):  # interleaved, so noise hits every variant alike; first is warm-up
            for name, kw in variants.items():
                start = time.perf_counter()
                augment_batch(x, 4, True, g, **kw)
                best[name] = min(best[name], 1e3 * (time.perf_counter() - start))
    finally:
        torch.set_num_threads(threads)
    base = best["crop+flip"]
    with capsys.disabled():
        row = ", ".join(f"{k} {v:.1f} ms ({v / base:.1f}x)" for k, v in best.items())
        print(f"\naugment_batch 256x3x32x32, CPU, 1 thread, best of 6: {row}")


@pytest.mark.parametrize("name", OPS)
def test_every_op_gives_the_same_on_channels_last_images(name):
    # Training feeds channels-last batches (train.channels_last) to the policies; with
    # crop_padding=0 no crop before them makes the batch contiguous (equalize failed there).
    x, m = _images(4, 16), torch.full((4,), 0.6)
    op = torch.full((4,), OPS.index(name))
    plain = apply_ops(x.clone(), op, m)
    last = apply_ops(x.clone().contiguous(memory_format=torch.channels_last), op, m)
    assert torch.allclose(plain, last, atol=1e-4), name

"""TrivialAugmentWide and RandAugment on float [0, 255] NCHW RGB batches, on the batch's device.

Every image draws its own op and magnitude; each op type runs once, batched, on the images that
drew it. Ops and magnitude tables follow torchvision's transforms/autoaugment.py (31 bins).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

# The order of torchvision's augmentation space. The five geometric ops are adjacent on purpose:
# they share one affine_grid + grid_sample call.
OPS = (
    "identity",
    "shear_x",
    "shear_y",
    "translate_x",
    "translate_y",
    "rotate",
    "brightness",
    "color",
    "contrast",
    "sharpness",
    "posterize",
    "solarize",
    "autocontrast",
    "equalize",
)
NUM_BINS = 31  # magnitude bins 0..30, as torchvision (and RandAugment's 0..30 scale)
FILL = 128.0  # grey where geometric ops uncover the image (torchvision's default is 0)
_SHEAR_X, _SHEAR_Y, _TRANSLATE_X, _TRANSLATE_Y, _ROTATE = (
    OPS.index(name) for name in ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
)


def magnitude_table(policy: str, height: int, width: int) -> dict[str, tuple[float, float, bool]]:
    """op -> (magnitude at bin 0, at bin 30, signed); linear in between, as torch.linspace."""
    if policy == "trivial":  # TrivialAugmentWide: absolute values, tuned on 32x32 images
        shear, tx, ty, rot, enhance, min_bits = 0.99, 32.0, 32.0, 135.0, 0.99, 2.0
    elif policy == "randaugment":
        shear, rot, enhance, min_bits = 0.3, 30.0, 0.9, 4.0
        tx, ty = 150.0 / 331.0 * width, 150.0 / 331.0 * height
    else:
        raise ValueError(f"policy={policy!r}: choose trivial or randaugment")
    table = dict.fromkeys(OPS, (0.0, 0.0, False))  # identity, autocontrast, equalize
    table.update(shear_x=(0.0, shear, True), shear_y=(0.0, shear, True))
    table.update(translate_x=(0.0, tx, True), translate_y=(0.0, ty, True))
    table.update(rotate=(0.0, rot, True))
    for name in ("brightness", "color", "contrast", "sharpness"):
        table[name] = (0.0, enhance, True)
    # posterize rounds this to whole bits, which gives torchvision's 8 - round(bin / k) exactly
    table.update(posterize=(8.0, min_bits, False), solarize=(255.0, 0.0, False))
    return table


def magnitudes(
    policy: str, op: Tensor, bins: Tensor, negate: Tensor, height: int, width: int
) -> Tensor:
    """Per-image magnitude of op `op` at bin `bins`, negated where `negate` and the op is signed."""
    lo, hi, signed = _table_tensors(policy, height, width, op.device)
    value = lo[op] + (hi[op] - lo[op]) * bins.to(lo.dtype) / (NUM_BINS - 1)
    return torch.where(signed[op] & negate, -value, value)


@lru_cache(maxsize=16)
def _table_tensors(
    policy: str, height: int, width: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    # Cached: a host-to-GPU copy per batch would stall the training loop.
    columns = zip(*magnitude_table(policy, height, width).values())
    return tuple(torch.tensor(col, device=device) for col in columns)  # type: ignore[return-value]


# ---- the pixel ops: x (N, 3, H, W) float in [0, 255], m a per-image tensor (N,) -------------


def _per_image(m: Tensor, x: Tensor) -> Tensor:
    return m.to(x.dtype).view(-1, 1, 1, 1)


def blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """factor * x + (1 - factor) * other, per image, clamped (torchvision's _blend)."""
    f = _per_image(factor, x)
    return (f * x + (1 - f) * other).clamp(0, 255)


def grayscale(x: Tensor) -> Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) luma."""
    # torchvision's rgb_to_grayscale weights
    return 0.2989 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]


def brightness(x: Tensor, m: Tensor) -> Tensor:
    """Scale by 1 + m."""
    return blend(x, torch.zeros_like(x), 1 + m)


def color(x: Tensor, m: Tensor) -> Tensor:
    """Saturation: blend with the grey image by factor 1 + m."""
    return blend(x, grayscale(x), 1 + m)


def contrast(x: Tensor, m: Tensor) -> Tensor:
    """Blend with the image's mean grey level by factor 1 + m."""
    return blend(x, grayscale(x).mean((1, 2, 3), keepdim=True), 1 + m)


def sharpness(x: Tensor, m: Tensor) -> Tensor:
    """Blend with a 3x3 smoothed copy (border pixels kept) by factor 1 + m."""
    n, c, h, w = x.shape
    if h <= 2 or w <= 2:
        return x
    kernel = torch.ones(c, 1, 3, 3, dtype=x.dtype, device=x.device)
    kernel[:, :, 1, 1] = 5.0
    smooth = F.conv2d(x, kernel / 13.0, groups=c)  # depthwise: ~8x faster on CPU than N*C planes
    degenerate = x.clone()
    degenerate[:, :, 1:-1, 1:-1] = smooth
    return blend(x, degenerate, 1 + m)


def posterize(x: Tensor, bits: Tensor) -> Tensor:
    """Keep the top `bits` bits of each (integer) level; 8 bits is the identity."""
    bits = _per_image(bits, x).round().clamp(1, 8)
    step = torch.exp2(8 - bits)
    return torch.where(bits >= 8, x, torch.floor(x / step) * step)


def solarize(x: Tensor, threshold: Tensor) -> Tensor:
    """Invert levels at or above the per-image threshold (torchvision's >=)."""
    return torch.where(x >= _per_image(threshold, x), 255 - x, x)


def autocontrast(x: Tensor) -> Tensor:
    """Stretch each channel to [0, 255]; a flat channel is left as it is."""
    lo = x.amin((2, 3), keepdim=True)
    hi = x.amax((2, 3), keepdim=True)
    stretched = (x - lo) * (255 / (hi - lo).clamp(min=1e-6))
    return torch.where(hi > lo, stretched, x).clamp(0, 255)


def equalize(x: Tensor) -> Tensor:
    """Histogram equalisation per image-channel, PIL's algorithm, on all channels at once."""
    n, c, h, w = x.shape
    levels = x.round().clamp(0, 255).long().reshape(n * c, h * w)  # any memory layout
    hist = torch.zeros(n * c, 256, dtype=torch.long, device=x.device)
    hist.scatter_add_(1, levels, torch.ones_like(levels))
    # PIL leaves out the count of the highest level present when it sizes the step.
    top = hist.gather(1, levels.amax(1, keepdim=True))
    step = (h * w - top) // 255
    lut = (hist.cumsum(1) + step // 2) // step.clamp(min=1)
    lut = F.pad(lut, (1, 0))[:, :-1].clamp(0, 255)
    out = lut.gather(1, levels).to(x.dtype).view(n, c, h, w)
    return torch.where((step > 0).view(n, c, 1, 1), out, x)


def geometric(x: Tensor, op: Tensor, m: Tensor, fill: float = FILL) -> Tensor:
    """Shear, translate or rotate each image by its own op (an OPS index) and magnitude.

    One affine_grid + grid_sample for the batch; nearest sampling (torchvision's default).
    Shears pivot on the top-left corner, translations are whole pixels, rotations are
    counter-clockwise about the centre, all as torchvision does.
    """
    n, c, h, w = x.shape
    m = m.to(x.dtype)
    zero = torch.zeros_like(m)
    rad = torch.deg2rad(torch.where(op == _ROTATE, m, zero))
    cos, sin = rad.cos(), rad.sin()
    shift = torch.trunc(m)  # torchvision passes int(magnitude) pixels
    # The inverse map (output pixel -> source pixel) in pixels about the image centre.
    a12 = torch.where(op == _SHEAR_X, m, -sin)
    a21 = torch.where(op == _SHEAR_Y, m, sin)
    tx = torch.where(op == _SHEAR_X, m * h / 2, torch.where(op == _TRANSLATE_X, -shift, zero))
    ty = torch.where(op == _SHEAR_Y, m * w / 2, torch.where(op == _TRANSLATE_Y, -shift, zero))
    # ... and in affine_grid's [-1, 1] coordinates.
    theta = torch.stack([cos, a12 * h / w, tx * 2 / w, a21 * w / h, cos, ty * 2 / h], 1)
    grid = F.affine_grid(theta.view(n, 2, 3), [n, c, h, w], align_corners=False)
    # Zero padding of (x - fill) is padding with `fill`.
    out = F.grid_sample(x - fill, grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return out + fill


# ---- applying a per-image op choice -----------------------------------------------------------

_Op = Callable[[Tensor, Tensor, Tensor, float], Tensor]
_PIXEL_OPS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "brightness": brightness,
    "color": color,
    "contrast": contrast,
    "sharpness": sharpness,
    "posterize": posterize,
    "solarize": solarize,
    "autocontrast": lambda x, m: autocontrast(x),
    "equalize": lambda x, m: equalize(x),
}


def _pixel_op(fn: Callable[[Tensor, Tensor], Tensor]) -> _Op:
    return lambda x, op, m, fill: fn(x, m)


# (first OPS index, last OPS index, op), in OPS order; the geometric ops form one group.
_GROUPS: list[tuple[int, int, _Op]] = [
    (0, 0, lambda x, op, m, fill: x),
    (_SHEAR_X, _ROTATE, geometric),
    *((OPS.index(name), OPS.index(name), _pixel_op(fn)) for name, fn in _PIXEL_OPS.items()),
]
assert [i for first, last, _ in _GROUPS for i in range(first, last + 1)] == list(range(len(OPS)))


def apply_ops(
    x: Tensor, op: Tensor, m: Tensor, fill: float = FILL, subset: bool | None = None
) -> Tensor:
    """Apply op OPS[op[i]] with magnitude m[i] to image i.

    subset=True runs each op on just the images that drew it (one host sync for the counts);
    False runs each op on the whole batch and selects (no sync, the better trade on a GPU).
    None picks subset on the CPU only.
    """
    if x.shape[0] == 0:
        return x
    if subset is None:
        subset = x.device.type == "cpu"
    if not subset:
        out = x
        for first, last, fn in _GROUPS[1:]:
            chosen = ((op >= first) & (op <= last)).view(-1, 1, 1, 1)
            out = torch.where(chosen, fn(x, op, m, fill), out)
        return out
    # Sorting by op makes each group a contiguous slice.
    order = torch.argsort(op, stable=True)
    counts = torch.bincount(op, minlength=len(OPS)).tolist()
    xs, ops, ms = x[order], op[order], m[order]
    parts, start = [], 0
    for first, last, fn in _GROUPS:
        end = start + sum(counts[first : last + 1])
        if end > start:
            parts.append(fn(xs[start:end], ops[start:end], ms[start:end], fill))
        start = end
    out = torch.empty_like(x)
    out[order] = torch.cat(parts)
    return out


# ---- the policies -----------------------------------------------------------------------------


def draw_uniform(
    shape: tuple[int, ...], generator: torch.Generator, device: torch.device
) -> Tensor:
    """U[0, 1) from `generator` (on its own device), moved to `device`."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def draw_normal(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """N(0, 1) from `generator` (on its own device), moved to `device`."""
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def draw_int(
    high: int, shape: tuple[int, ...], generator: torch.Generator, device: torch.device
) -> Tensor:
    """Integers in [0, high) from `generator` (on its own device), moved to `device`."""
    return torch.randint(0, high, shape, generator=generator, device=generator.device).to(device)


def trivial_augment(x: Tensor, generator: torch.Generator, fill: float = FILL) -> Tensor:
    """TrivialAugmentWide: each image gets one op at a magnitude bin drawn uniformly."""
    n, _, h, w = x.shape
    op = draw_int(len(OPS), (n,), generator, x.device)
    bins = draw_int(NUM_BINS, (n,), generator, x.device)
    negate = draw_int(2, (n,), generator, x.device).bool()
    return apply_ops(x, op, magnitudes("trivial", op, bins, negate, h, w), fill)


def rand_augment(
    x: Tensor, generator: torch.Generator, magnitude: int = 9, ops: int = 2, fill: float = FILL
) -> Tensor:
    """RandAugment: `ops` ops drawn per image, each at bin `magnitude` (0..30)."""
    if not 0 <= magnitude < NUM_BINS or ops < 0:
        raise ValueError(f"randaugment needs magnitude in 0..{NUM_BINS - 1} and ops >= 0")
    n, _, h, w = x.shape
    bins = torch.full((n,), magnitude, device=x.device)
    for _ in range(ops):
        op = draw_int(len(OPS), (n,), generator, x.device)
        negate = draw_int(2, (n,), generator, x.device).bool()
        x = apply_ops(x, op, magnitudes("randaugment", op, bins, negate, h, w), fill)
    return x

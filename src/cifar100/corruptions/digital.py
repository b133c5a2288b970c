"""The digital family: contrast, elastic_transform, pixelate, jpeg_compression."""

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image

from .filters import gaussian_filter, sample_bilinear
from .params import Elastic, Pixelate
from .registry import register


@register("digital")
def contrast(x: np.ndarray, factor: float, rngs: Sequence[np.random.RandomState]) -> np.ndarray:
    """Pull every value towards its channel's mean over the image."""
    img = x / 255.0
    means = img.mean(axis=(1, 2), keepdims=True)
    return np.clip((img - means) * factor + means, 0, 1) * 255


def _affine_warp(img: np.ndarray, jitter: np.ndarray) -> np.ndarray:
    """make_cifar_c.py's random affine: three points around the centre moved by `jitter` (3, 2),
    the image warped to follow them: bilinear, edges mirrored about the edge pixel, within 1/100
    of a level of cv2.warpAffine(borderMode=BORDER_REFLECT_101) (tests/test_corruptions.py)."""
    h, w = img.shape[:2]
    centre = np.float32([h, w]) // 2
    side = min(h, w) // 3
    src = np.float32([centre + side, [centre[0] + side, centre[1] - side], centre - side])
    dst = src + jitter
    # The affine map M with M @ (x, y, 1) = dst for each src point (OpenCV's x, y order).
    m = np.linalg.solve(np.c_[src.astype(np.float64), np.ones(3)], dst.astype(np.float64)).T
    inv = np.linalg.inv(m[:, :2])
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    px, py = xs - m[0, 2], ys - m[1, 2]
    sx = inv[0, 0] * px + inv[0, 1] * py
    sy = inv[1, 0] * px + inv[1, 1] * py
    return sample_bilinear(img[None], sy[None], sx[None], "mirror")[0].astype(np.float32)


@register("digital")
def elastic_transform(
    x: np.ndarray, params: Elastic, rngs: Sequence[np.random.RandomState]
) -> np.ndarray:
    """Move every pixel by a smooth random field (after a random affine warp in the cifar table)."""
    n, h, w = x.shape[:3]
    img = x.astype(np.float32) / 255.0
    sigma = (h * params.sigma, w * params.sigma)
    reach = h * params.max_shift
    fields = []
    for i, rng in enumerate(rngs):
        if params.affine is not None:
            jitter = rng.uniform(-params.affine * h, params.affine * h, size=(3, 2))
            img[i] = _affine_warp(img[i], jitter.astype(np.float32))
        fields.append([rng.uniform(-reach, reach, size=(h, w)) for _ in range(2)])
    fields = np.asarray(fields)  # (N, 2, H, W): dx, dy
    smooth = [gaussian_filter(fields[:, k], sigma, mode="reflect", truncate=3) for k in (0, 1)]
    dx, dy = ((s * params.alpha).astype(np.float32).astype(np.float64) for s in smooth)
    ys, xs = np.mgrid[0:h, 0:w]
    moved = sample_bilinear(img, ys + dy, xs + dx, "reflect")
    return np.clip(moved.astype(np.float32), 0, 1) * np.float32(255)


_FILTERS = {"box": Image.BOX, "nearest": Image.NEAREST}


@register("digital")
def pixelate(x: np.ndarray, params: Pixelate, rngs: Sequence[np.random.RandomState]) -> np.ndarray:
    """Shrink by `factor` with a box filter and scale back up."""
    h, w = x.shape[1:3]
    small = (int(w * params.factor), int(h * params.factor))
    up = _FILTERS[params.upsample]
    return np.stack(
        [np.asarray(Image.fromarray(im).resize(small, Image.BOX).resize((w, h), up)) for im in x]
    )


def _jpeg(im: np.ndarray, quality: int) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(im).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    with Image.open(buf) as decoded:
        return np.asarray(decoded.convert("RGB"))


@register("digital")
def jpeg_compression(
    x: np.ndarray, quality: int, rngs: Sequence[np.random.RandomState]
) -> np.ndarray:
    """Encode as JPEG at `quality` with Pillow and decode again."""
    return np.stack([_jpeg(im, quality) for im in x])

"""The blur family: defocus_blur, glass_blur, motion_blur, zoom_blur."""

from collections.abc import Sequence

import numpy as np

from .filters import clipped_zoom, correlate2d, correlate_axis, directional_blur, gaussian_filter
from .params import MotionBlur, ZoomRange
from .registry import register


def _cv2_gaussian_kernel(size: int, sigma: float) -> np.ndarray:
    """OpenCV's getGaussianKernel for sigma > 0."""
    x = np.arange(size) - (size - 1) / 2
    k = np.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The defocus kernel of ImageNet-C: a disk of `radius`, normalised, then slightly blurred.

    The disk sits on a grid of at least 17x17 and is smoothed by a 3x3 (5x5 above radius 8)
    Gaussian, edges reflected as cv2.GaussianBlur does.
    """
    half = 8 if radius <= 8 else int(radius)
    ks = 3 if radius <= 8 else 5
    grid = np.arange(-half, half + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = ((xx**2 + yy**2) <= radius**2).astype(np.float32)
    disk /= disk.sum()
    g = _cv2_gaussian_kernel(ks, alias_blur)
    blurred = correlate_axis(disk[None], g, 1, "mirror")
    blurred = correlate_axis(blurred, g, 2, "mirror")
    return blurred[0].astype(np.float32)


@register("blur")
def defocus_blur(
    x: np.ndarray, params: tuple[float, float], rngs: Sequence[np.random.RandomState]
) -> np.ndarray:
    """Convolve each channel with a disk (cv2.filter2D, edges mirrored about the edge pixel)."""
    out = correlate2d(x / 255.0, disk_kernel(*params), "mirror")
    return np.clip(out, 0, 1) * 255


@register("blur")
def glass_blur(
    x: np.ndarray, params: tuple[float, int, int], rngs: Sequence[np.random.RandomState]
) -> np.ndarray:
    """Blur, move pixels locally, blur again.

    The reference's "swap" (x[h, w], x[h', w'] = x[h', w'], x[h, w] on numpy views) copies
    x[h', w'] into x[h, w] and leaves x[h', w'] as it was; that copy, in the reference's order
    (rows and columns from the far edge inwards), is what every published image has, so it is
    what this does. The visit order makes each step depend on the last, so the loop runs over
    positions with all images of the batch moved at once.
    """
    sigma, delta, iterations = params
    n, h, w = x.shape[:3]
    blurred = np.uint8(gaussian_filter(x / 255.0, sigma) * 255)
    rows = range(h - delta, delta, -1)
    cols = range(w - delta, delta, -1)
    # Each image's offsets for every visit, drawn at once: randint(size=(k, 2)) yields the
    # same numbers as k calls of randint(size=(2,)).
    steps = len(rows) * len(cols)
    shifts = np.stack(
        [rng.randint(-delta, delta, size=(iterations * steps, 2)) for rng in rngs]
    ).reshape(n, iterations, len(rows), len(cols), 2)
    b = np.arange(n)
    for it in range(iterations):
        for i, hh in enumerate(rows):
            for j, ww in enumerate(cols):
                dx, dy = shifts[:, it, i, j, 0], shifts[:, it, i, j, 1]
                blurred[b, hh, ww] = blurred[b, hh + dy, ww + dx]
    return np.clip(gaussian_filter(blurred / 255.0, sigma), 0, 1) * 255


@register("blur")
def motion_blur(
    x: np.ndarray, params: MotionBlur, rngs: Sequence[np.random.RandomState]
) -> np.ndarray:
    """Blur along a random direction in -45..45 degrees (ImageMagick's MotionBlurImage).

    make_cifar_c.py called ImageMagick through Wand; imagecorruptions ported the same kernel and
    offsets to numpy (edges repeated), and this follows that port for both tables.
    """
    angles = np.array([rng.uniform(-45, 45) for rng in rngs])
    out = np.clip(directional_blur(x, params.radius, params.sigma, angles), 0, 255)
    return np.rint(out) if params.rounded else out


@register("blur")
def zoom_blur(x: np.ndarray, zooms: ZoomRange, rngs: Sequence[np.random.RandomState]) -> np.ndarray:
    """Average the image with centre zooms of itself by each factor in the range."""
    factors = np.arange(zooms.start, zooms.stop, zooms.step)
    img = (x / 255.0).astype(np.float32)
    out = np.zeros_like(img)
    for f in factors:
        out += clipped_zoom(img, f, zooms.trim).astype(np.float32)
    return np.clip((img + out) / (len(factors) + 1), 0, 1) * 255

"""The weather family: snow, frost, fog, brightness."""

from collections.abc import Sequence

import numpy as np

from .filters import clipped_zoom, directional_blur
from .frost_pictures import scaled_picture
from .params import Frost, Snow
from .registry import register


@register("weather")
def snow(x: np.ndarray, p: Snow, rngs: Sequence[np.random.RandomState]) -> np.ndarray:
    """Zoomed, thresholded noise streaked by a motion blur, added twice (once turned 180 degrees)
    to the image mixed with a brightened grey copy of itself."""
    n, h, w = x.shape[:3]
    flakes, angles = [], []
    for rng in rngs:
        flakes.append(rng.normal(size=(h, w), loc=p.mean, scale=p.std))
        angles.append(rng.uniform(-135, -45))
    # imagecorruptions blurs the whole zoom, which can be a pixel larger than the image, and
    # crops afterwards; make_cifar_c.py keeps the centre first.
    layer = clipped_zoom(np.stack(flakes)[..., None], p.zoom, "centre" if p.cifar else None)
    layer = layer[..., 0]
    layer[layer < p.threshold] = 0
    layer = np.clip(layer, 0, 1)
    if p.cifar:  # handed to ImageMagick as an 8-bit greyscale PNG
        layer = (layer * 255).astype(np.uint8) / 255.0
    layer = directional_blur(layer, p.radius, p.sigma, np.array(angles))
    layer = (np.round(layer * 255).astype(np.uint8) / 255.0)[:, :h, :w, None]
    img = x.astype(np.float32) / 255.0
    # cv2.cvtColor(RGB2GRAY) weights, in float32 as OpenCV computes them
    grey = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    img = p.weight * img + (1 - p.weight) * np.maximum(img, grey[..., None] * 1.5 + 0.5)
    return np.clip(img + layer + layer[:, ::-1, ::-1], 0, 1) * 255


@register("weather")
def frost(x: np.ndarray, params: Frost, rngs: Sequence[np.random.RandomState]) -> np.ndarray:
    """Blend the image with a random crop of one of five frost pictures."""
    n, h, w = x.shape[:3]
    crops = []
    for rng in rngs:
        pic = scaled_picture(int(rng.randint(5)), h, w, params.scale)
        top = rng.randint(0, pic.shape[0] - h)
        left = rng.randint(0, pic.shape[1] - w)
        crops.append(pic[top : top + h, left : left + w])
    return np.clip(params.image * x + params.frost * np.stack(crops), 0, 255)


def plasma_fractal(size: int, decay: float, rng: np.random.RandomState) -> np.ndarray:
    """A size x size diamond-square height map in 0..1 (size a power of two).

    Draws its uniforms level by level, squares then diamonds, as ImageNet-C's plasma_fractal.
    """
    height = np.zeros((size, size))
    step, wibble = size, 100.0

    def jitter(acc: np.ndarray) -> np.ndarray:
        return acc / 4 + wibble * rng.uniform(-wibble, wibble, acc.shape)

    while step >= 2:
        half = step // 2
        corners = height[0:size:step, 0:size:step]
        acc = corners + np.roll(corners, -1, axis=0)
        acc += np.roll(acc, -1, axis=1)
        height[half:size:step, half:size:step] = jitter(acc)
        centres = height[half:size:step, half:size:step]
        corners = height[0:size:step, 0:size:step]
        acc = centres + np.roll(centres, 1, axis=0) + (corners + np.roll(corners, -1, axis=1))
        height[0:size:step, half:size:step] = jitter(acc)
        acc = centres + np.roll(centres, 1, axis=1) + (corners + np.roll(corners, -1, axis=0))
        height[half:size:step, 0:size:step] = jitter(acc)
        step //= 2
        wibble /= decay
    height -= height.min()
    return height / height.max()


@register("weather")
def fog(
    x: np.ndarray, params: tuple[float, float], rngs: Sequence[np.random.RandomState]
) -> np.ndarray:
    """Add a plasma fractal, then scale back so the brightest value stays where it was."""
    strength, decay = params
    n, h, w = x.shape[:3]
    size = 1 << (max(h, w, 3) - 1).bit_length()  # next power of two of the longest side
    mist = np.stack([plasma_fractal(size, decay, rng)[:h, :w] for rng in rngs])
    img = x / 255.0
    peak = img.max(axis=(1, 2, 3), keepdims=True)
    img = img + strength * mist[..., None]
    return np.clip(img * peak / (peak + strength), 0, 1) * 255


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    """skimage.color.rgb2hsv on (..., 3) floats in 0..1 (ties go to blue, then green, then red)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    delta = v - rgb.min(-1)
    safe = np.where(delta == 0, 1.0, delta)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = np.where(delta == 0, 0.0, delta / np.where(v == 0, 1.0, v))
    hue = np.where(r == v, (g - b) / safe, 0.0)
    hue = np.where(g == v, 2.0 + (b - r) / safe, hue)
    hue = np.where(b == v, 4.0 + (r - g) / safe, hue)
    hue = np.where(delta == 0, 0.0, (hue / 6.0) % 1.0)
    return np.stack([hue, s, v], axis=-1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """skimage.color.hsv2rgb on (..., 3) floats in 0..1."""
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    sector = np.floor(h * 6)
    f = h * 6 - sector
    p = v * (1 - s)
    q = v * (1 - f * s)
    t = v * (1 - (1 - f) * s)
    sector = sector.astype(np.uint8) % 6
    choices = np.stack(
        [
            np.stack((v, t, p), axis=-1),
            np.stack((q, v, p), axis=-1),
            np.stack((p, v, t), axis=-1),
            np.stack((p, q, v), axis=-1),
            np.stack((t, p, v), axis=-1),
            np.stack((v, p, q), axis=-1),
        ]
    )
    return np.take_along_axis(choices, sector[None, ..., None].repeat(3, -1), axis=0)[0]


@register("weather")
def brightness(x: np.ndarray, amount: float, rngs: Sequence[np.random.RandomState]) -> np.ndarray:
    """Raise the HSV value by `amount` (clipped to 1)."""
    hsv = rgb_to_hsv(x / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + amount, 0, 1)
    return np.clip(hsv_to_rgb(hsv), 0, 1) * 255

"""Decoded pixels of any Pillow mode to a square uint8 RGB array: the conversion, centre crop and
resize that `images.decode_image` and `prepare_image` share.

A large image is converted in tiles, each reduced on its own, so that only its decoded pixels
are ever held at full size: converting a 9000x9000 RGBA image whole made 3 or 4 copies of it
(1.5 GB from a PNG of 300 KB). The tiles give the same result to the bit.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

__all__ = ["BACKGROUND", "square_rgb", "to_rgb"]

# Transparent pixels are composited onto white: the usual look of a transparent PNG or icon
# in a viewer, and fixed so that training and predict agree.
BACKGROUND = (255, 255, 255)
# Pillow widens the bicubic kernel by the reduction factor, so downscaling is properly
# antialiased; a reducing gap first box-averages by an integer factor, which is much faster on
# large photos and, at 3.0, visually indistinguishable. BOX alone is faster still but blockier
# on non-integer factors and a poor upscaler for tiny images.
REDUCING_GAP = 3.0
# Above LARGE_PIXELS (64 MB at Pillow's 4 bytes a pixel) an image is converted in square tiles
# of about TILE_PIXELS (more where the reduction factor is larger than their side).
LARGE_PIXELS = 1 << 24
TILE_PIXELS = 1 << 20

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def square_rgb(im: Image.Image, size: int) -> np.ndarray:
    """uint8 (size, size, 3): `im` in RGB, its shorter side centre-cropped square, resized."""
    width, height = im.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    if width * height > LARGE_PIXELS:
        return _square_rgb_in_tiles(im, size, left, top, side)
    im = to_rgb(im)
    if width != height:
        im = im.crop((left, top, left + side, top + side))
    if side != size:
        im = im.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=REDUCING_GAP)
    # np.array copies: the result is writable and owns its memory, detached from Pillow.
    return np.array(im, dtype=np.uint8)


def _square_rgb_in_tiles(im: Image.Image, size: int, left: int, top: int, side: int) -> np.ndarray:
    """square_rgb without a full-size copy of `im`: tiles are converted and reduced by the
    integer factor that resize's reducing gap would reduce the whole crop by. Their sides are
    multiples of it, so each reduces exactly the blocks of the whole; the rest of the resize is
    then Pillow's, from the same box."""
    factor = (int(side / size / REDUCING_GAP) or 1) if side != size else 1
    step = max(1, math.isqrt(TILE_PIXELS) // factor) * factor
    reduced = Image.new("RGB", (-(-side // factor), -(-side // factor)))
    for y in range(0, side, step):
        for x in range(0, side, step):
            box = (left + x, top + y, left + min(x + step, side), top + min(y + step, side))
            tile = to_rgb(im.crop(box))
            reduced.paste(tile.reduce(factor) if factor > 1 else tile, (x // factor, y // factor))
    if side != size:
        box = (0, 0, side / factor, side / factor)
        reduced = reduced.resize((size, size), Image.Resampling.BICUBIC, box=box)
    return np.array(reduced, dtype=np.uint8)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency composited onto BACKGROUND. Pixel by pixel,
    so a part of an image converts as it would in the whole."""
    has_alpha = im.mode in _ALPHA_MODES or im.info.get("transparency") is not None
    if im.mode == "RGB" and not has_alpha:
        return im
    if im.mode in _WIDE_GREY_MODES:
        # Pillow's own conversion clips 16-bit values at 255 (nearly all white); scale the
        # 16-bit range down instead. Float images are taken to be 0..255 already.
        grey = np.asarray(im, dtype=np.float32)
        if im.mode != "F":
            grey = grey / 257.0
        grey8 = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return Image.fromarray(grey8).convert("RGB")
    if has_alpha:
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", im.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    # CMYK, palette, 1-bit, L, YCbCr: Pillow's conversions (CMYK without an ICC transform).
    return im.convert("RGB")

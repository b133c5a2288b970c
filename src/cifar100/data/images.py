"""Decode any image file into a square uint8 RGB array: the one path for training and predict.

Image folders (decode_pool.py) and `predict` both call `decode_image`, so a user's photo is prepared
exactly as the training images were.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cifar100.errors import DataError

__all__ = ["BACKGROUND", "IMAGE_EXTENSIONS", "decode_image"]

# Lower-case suffixes of the formats Pillow decodes here; folder_layout.py skips anything else.
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .gif .webp .tif .tiff .ppm .pgm .pbm .pnm".split()
)

# Transparent pixels are composited onto white: the usual look of a transparent PNG or icon
# in a viewer, and fixed so that training and predict agree.
BACKGROUND = (255, 255, 255)

_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_WIDE_GREY_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def decode_image(source: str | Path | bytes, size: int, name: str | None = None) -> np.ndarray:
    """Decode a file path or encoded bytes into a uint8 (size, size, 3) RGB array.

    EXIF orientation is applied, the shorter side is centre-cropped square, then resized.
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if name is None:
        name = "image" if isinstance(source, bytes) else str(source)
    if isinstance(source, bytes) and not source:
        raise DataError(f"{name}: not a readable image (empty file)")
    try:
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(fp) as im:
            _check_pixels(im, name)
            # JPEG can decode at 1/2, 1/4 or 1/8 scale for almost nothing (DCT scaling); keep
            # at least 2x the target so the resize below still antialiases from real detail.
            # Only worth asking when it can halve: the call itself slows small decodes by 40%.
            if min(im.size) >= 4 * size:
                im.draft(None, (2 * size, 2 * size))
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            return _square_rgb(im, size)
    except DataError:
        raise
    except (FileNotFoundError, IsADirectoryError, PermissionError) as e:
        raise DataError(f"{name}: cannot read file ({e.strerror})") from e
    except Image.DecompressionBombError as e:
        raise DataError(_bomb_message(name, str(e))) from e
    except UnidentifiedImageError as e:
        raise DataError(f"{name}: not a readable image (not a format Pillow recognises)") from e
    except Exception as e:
        # Pillow's plugins raise many types on malformed input (OSError, SyntaxError,
        # struct.error, IndexError, ...): any of them means the file cannot be used.
        detail = str(e) or type(e).__name__
        raise DataError(f"{name}: not a readable image ({detail})") from e


def _check_pixels(im: Image.Image, name: str) -> None:
    # Pillow raises only above twice its limit and merely warns above it; we refuse both, since
    # one huge file would stall a whole folder load or a predict request.
    limit = Image.MAX_IMAGE_PIXELS
    width, height = im.size
    if limit is not None and width * height > limit:
        raise DataError(_bomb_message(name, f"{width}x{height} = {width * height} pixels"))


def _bomb_message(name: str, detail: str) -> str:
    return (
        f"{name}: image too large to decode safely ({detail}; limit {Image.MAX_IMAGE_PIXELS} "
        "pixels, a possible decompression bomb); shrink it, or raise "
        "PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
    )


def _square_rgb(im: Image.Image, size: int) -> np.ndarray:
    im = _to_rgb(im)
    width, height = im.size
    side = min(width, height)
    if width != height:
        left, top = (width - side) // 2, (height - side) // 2
        im = im.crop((left, top, left + side, top + side))
    if side != size:
        # Pillow widens the bicubic kernel by the reduction factor, so downscaling is properly
        # antialiased; reducing_gap first box-averages by an integer factor, which is much faster
        # on large photos and, at 3.0, visually indistinguishable. BOX alone is faster still
        # but blockier on non-integer factors and a poor upscaler for tiny images.
        im = im.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    # np.array copies: the result is writable and owns its memory, detached from Pillow.
    return np.array(im, dtype=np.uint8)


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency composited onto BACKGROUND."""
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

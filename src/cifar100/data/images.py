"""Decode any image file into a square uint8 RGB array: the one path for training and predict.

Image folders (decode_pool.py) and `predict` both call `decode_image`, so a user's photo is prepared
exactly as the training images were.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cifar100.data.pixels import BACKGROUND, square_rgb
from cifar100.errors import DataError, ImageTooLarge
from cifar100.fileio import file_problem

__all__ = [
    "BACKGROUND",
    "HEADER_BYTES",
    "IMAGE_EXTENSIONS",
    "check_expansion",
    "check_file_size",
    "decode_image",
    "prepare_image",
    "prepare_images",
]

# Lower-case suffixes of the formats Pillow decodes here; folder_layout.py skips anything else.
IMAGE_EXTENSIONS = frozenset(
    ".jpg .jpeg .jpe .jfif .png .bmp .gif .webp .tif .tiff .ppm .pgm .pbm .pnm".split()
)

# How large an image file may be, known from its header before the file is read: a small
# compressed archive member (or a sparse file) can otherwise declare gigabytes.
# Metadata (EXIF, ICC profiles, XMP, thumbnails) can make even a tiny image a few MB, so files
# up to HEADER_BYTES are read without a look. A larger file must show its pixel size within its
# first HEADER_BYTES (a header further in means more metadata than that anyway) and may take at
# most HEADER_BYTES plus BYTES_PER_PIXEL for each pixel.
HEADER_BYTES = 4 << 20
# The deepest pixels Pillow reads are 4 channels of 16 bits, 8 bytes; stored raw or
# incompressible they take a little more (PNG adds a filter byte a row, deflate 0.1%; a JPEG of
# noise at quality 100 without subsampling takes 1.4x its 3 or 4 bytes). Plain (ASCII) PNM spells
# each sample out in up to 6 characters ("65535 ").
BYTES_PER_PIXEL = 10
PLAIN_PNM_BYTES_PER_PIXEL = 20
# Beyond HEADER_BYTES, a file may hold at most EXPANSION times the bytes it takes where it is
# kept: in a compressed tarball, or on disk. Image data is compressed already, and raw pixels
# seldom shrink 10 times, while zeros after an image header shrink a thousand times: a 0.8 MB
# tarball held a 9000x9000 PNG header and 810 MB of zeros, which Pillow reads (a WebP whole, a
# PNG chunk whole) before it finds nothing there.
EXPANSION = 64


def decode_image(
    source: str | Path | bytes, size: int, name: str | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """Decode a file path or encoded bytes into a uint8 (size, size, 3) RGB array.

    EXIF orientation is applied, the shorter side is centre-cropped square, then resized.
    max_pixels: refuse larger images, from their header, before decoding (a lower limit than
    Pillow's own, which always applies).
    """
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if name is None:
        name = "image" if isinstance(source, bytes) else str(source)
    if isinstance(source, bytes) and not source:
        raise DataError(f"{name}: not a readable image (empty file)")
    try:
        if isinstance(source, bytes):
            if len(source) > HEADER_BYTES:
                check_file_size(source[:HEADER_BYTES], len(source), name)
        else:
            problem = file_problem(source)
            if problem:
                raise DataError(f"{name}: {problem}")
            st = os.stat(source)
            file_size = st.st_size
            if file_size == 0:
                raise DataError(f"{name}: not a readable image (empty file)")
            if file_size > HEADER_BYTES:
                with open(source, "rb") as f:
                    check_file_size(f.read(HEADER_BYTES), file_size, name)
                on_disk = getattr(st, "st_blocks", 0) * 512  # 0 where not told (Windows)
                if on_disk:
                    check_expansion(file_size, on_disk, name, "on disk (a sparse file)")
        fp = io.BytesIO(source) if isinstance(source, bytes) else source
        with Image.open(fp) as im:
            _check_pixel_count(im.size, name, max_pixels)
            # JPEG can decode at 1/2, 1/4 or 1/8 scale for almost nothing (DCT scaling); keep
            # at least 2x the target so the resize below still antialiases from real detail.
            # Only worth asking when it can halve: the call itself slows small decodes by 40%.
            if min(im.size) >= 4 * size:
                im.draft(None, (2 * size, 2 * size))
            im.load()
            ImageOps.exif_transpose(im, in_place=True)
            return square_rgb(im, size)
    except DataError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(_bomb_message(name, _pillow_pixels(e))) from e
    except UnidentifiedImageError as e:
        raise DataError(f"{name}: not a readable image (not a format Pillow recognises)") from e
    except Exception as e:
        if isinstance(e, OSError) and e.errno is not None:
            # The system refused the file itself (ENAMETOOLONG, ELOOP, ENOTDIR, EACCES, EIO...);
            # Pillow's own OSErrors about a file's contents carry no errno.
            raise DataError(f"{name}: cannot read file ({e.strerror or e})") from e
        # Pillow's plugins raise many types on malformed input (OSError, SyntaxError,
        # struct.error, IndexError, ...): any of them means the file cannot be used.
        detail = str(e) or type(e).__name__
        raise DataError(f"{name}: not a readable image ({detail})") from e


def prepare_image(image: object, size: int, name: str | None = None) -> np.ndarray:
    """Any one image a user holds -> uint8 (size, size, 3) RGB, as training prepared its own.

    A path or encoded bytes go through `decode_image`, exactly as image folders are read. A
    PIL image, or a uint8 array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), takes the same
    orientation, colour conversion, centre crop and resize.
    """
    if isinstance(image, str | Path | bytes | bytearray | memoryview):
        source = bytes(image) if isinstance(image, bytearray | memoryview) else image
        return decode_image(source, size, name)
    name = name or "image"
    if isinstance(image, np.ndarray):
        image = _array_to_pil(image, name)
    elif isinstance(image, Image.Image):
        _check_pixel_count(image.size, name)
        image = ImageOps.exif_transpose(image)  # a copy: the caller's image stays as it was
    else:
        raise TypeError(
            f"{name}: expected a path, bytes, a PIL image or a uint8 array, got "
            f"{type(image).__name__}"
        )
    return square_rgb(image, size)


def prepare_images(images: object, size: int) -> np.ndarray:
    """One image or many (a list, or a uint8 array (N, H, W, 3)) -> uint8 (N, size, size, 3)."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if images.dtype == np.uint8 and images.shape[1:] == (size, size, 3):
            return np.ascontiguousarray(images)  # already what square_rgb would return
        images = list(images)
    elif not isinstance(images, list | tuple):
        images = [images]
    if not images:
        return np.zeros((0, size, size, 3), np.uint8)
    return np.stack([prepare_image(im, size, _name(im, i)) for i, im in enumerate(images)])


def _name(image: object, index: int) -> str:
    return str(image) if isinstance(image, str | Path) else f"image {index}"


def _array_to_pil(array: np.ndarray, name: str) -> Image.Image:
    if array.dtype != np.uint8:
        raise DataError(
            f"{name}: a {array.dtype} array; give uint8 pixels 0..255 (e.g. "
            "(x * 255).round().astype(np.uint8) for floats in [0, 1])"
        )
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise DataError(
            f"{name}: an array of shape {array.shape}; give (H, W), (H, W, 1), (H, W, 3) "
            "or (H, W, 4) uint8 pixels, or a batch (N, H, W, 3)"
        )
    _check_pixel_count((array.shape[1], array.shape[0]), name)
    return Image.fromarray(np.ascontiguousarray(array))


def check_file_size(head: bytes, file_size: int, name: str) -> None:
    """Refuse an image file larger than its pixels can explain, from its first HEADER_BYTES.

    Also refuses a header that is not an image's, or one above the pixel limit, so that such a
    file need not be read at all.
    """
    if file_size <= HEADER_BYTES:
        return
    width, height = _pixel_size(head, name)
    plain_pnm = head[:2] in (b"P1", b"P2", b"P3")
    limit = HEADER_BYTES + width * height * (
        PLAIN_PNM_BYTES_PER_PIXEL if plain_pnm else BYTES_PER_PIXEL
    )
    if file_size > limit:
        raise ImageTooLarge(
            f"{name}: {file_size} bytes, more than a {width}x{height} image can take "
            f"({limit} at most): an animation, data appended to an image, or a decompression "
            "bomb; save it as a single still image"
        )


def check_expansion(size: int, stored: int, name: str, where: str) -> None:
    """Refuse `size` bytes of a file kept in only `stored` bytes (`where`: "of the compressed
    tarball", "on disk (a sparse file)"), more than image data shrinks (EXPANSION)."""
    if size > HEADER_BYTES and size > EXPANSION * stored:
        raise ImageTooLarge(
            f"{name}: {size} bytes from {stored} {where}, {size // max(stored, 1)} times fewer: "
            "not image data, which never shrinks so far; save the image again on its own"
        )


def _pixel_size(head: bytes, name: str) -> tuple[int, int]:
    size = _webp_size(head)  # Pillow reads a whole WebP file to open it, so not a prefix
    if size is None:
        try:
            with Image.open(io.BytesIO(head)) as im:
                size = im.size
        except Image.DecompressionBombError as e:
            raise ImageTooLarge(_bomb_message(name, _pillow_pixels(e))) from None
        except Exception:  # any plugin's error: no header Pillow can read in these bytes
            raise DataError(
                f"{name}: not a readable image (no image header in its first "
                f"{HEADER_BYTES >> 20} MiB); if it is one, save it again as PNG or JPEG"
            ) from None
    _check_pixel_count(size, name)
    return size


def _webp_size(head: bytes) -> tuple[int, int] | None:
    """Width and height from a WebP's first 30 bytes (RFC 9649), None if not a WebP."""
    if len(head) < 30 or head[:4] != b"RIFF" or head[8:12] != b"WEBP":
        return None
    kind, le = head[12:16], int.from_bytes
    if kind == b"VP8X":  # extended: canvas width - 1, height - 1, 24 bits each
        return 1 + le(head[24:27], "little"), 1 + le(head[27:30], "little")
    if kind == b"VP8L":  # lossless: 14 bits of width - 1, 14 of height - 1, after 0x2f
        bits = le(head[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + (bits >> 14 & 0x3FFF)
    if kind == b"VP8 ":  # lossy: a key frame's 14-bit width and height after its start code
        return le(head[26:28], "little") & 0x3FFF, le(head[28:30], "little") & 0x3FFF
    return None


def _check_pixel_count(size: tuple[int, int], name: str, limit: int | None = None) -> None:
    # Pillow raises only above twice its limit and merely warns above it; we refuse both, since
    # one huge file would stall a whole folder load or a predict request. A caller (the
    # service) may set a lower limit of its own.
    width, height = size
    if limit is not None and width * height > limit:
        raise ImageTooLarge(
            f"{name}: {width}x{height} = {width * height} pixels, over this server's limit "
            f"of {limit} (--max-pixels); send a smaller image"
        )
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and width * height > limit:
        raise ImageTooLarge(_bomb_message(name, f"{width}x{height} = {width * height} pixels"))


def _pillow_pixels(e: Image.DecompressionBombError) -> str | None:
    # Pillow's own text quotes its error limit (twice ours); keep only the image's size from it.
    found = re.search(r"\((\d+) pixels\)", str(e))
    return f"{found[1]} pixels" if found else None


def _bomb_message(name: str, size: str | None) -> str:
    what = f"{size}, over" if size else "over"
    return (
        f"{name}: image too large to decode safely ({what} the limit of "
        f"{Image.MAX_IMAGE_PIXELS} pixels: a possible decompression bomb); shrink it, or raise "
        "PIL.Image.MAX_IMAGE_PIXELS if you trust the file"
    )

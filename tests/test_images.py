"""decode_image: every mode to RGB, EXIF orientation, centre crop + resize, clear errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cifar100.data import images, pixels
from cifar100.data.images import BACKGROUND, IMAGE_EXTENSIONS, decode_image
from cifar100.errors import DataError
from synthetic_folders import encode

WHITE = np.array(BACKGROUND, np.uint8)


def _decode(image: Image.Image, size: int = 8, fmt: str = "PNG", **kwargs) -> np.ndarray:
    out = decode_image(encode(image, fmt, **kwargs), size, "x")
    assert out.dtype == np.uint8 and out.shape == (size, size, 3)
    return out


def test_rgb_and_greyscale():
    assert (_decode(Image.new("RGB", (8, 8), (10, 20, 30))) == (10, 20, 30)).all()
    assert (_decode(Image.new("L", (8, 8), 100)) == 100).all()
    assert (_decode(Image.new("1", (8, 8), 1)) == 255).all()


def test_la_and_rgba_are_composited_on_white():
    la = Image.new("LA", (8, 8), (50, 255))
    la.paste((0, 0), (0, 0, 4, 8))  # left half fully transparent
    out = _decode(la)
    assert (out[:, :4] == WHITE).all() and (out[:, 4:] == 50).all()
    half = _decode(Image.new("RGBA", (8, 8), (0, 0, 0, 128)))
    assert np.abs(half.astype(int) - 127).max() <= 1  # black at 50% over white


def test_palette_with_transparency():
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    p.paste(0, (0, 0, 8, 4))  # top half uses the transparent index 0
    out = _decode(p, transparency=0)
    assert (out[:4] == WHITE).all() and (out[4:] == (200, 10, 10)).all()


def test_cmyk_jpeg():
    out = _decode(Image.new("CMYK", (8, 8), (255, 0, 0, 0)), fmt="JPEG", quality=100)
    assert np.abs(out.astype(int) - (0, 255, 255)).max() <= 3  # cyan


def test_16_bit_greyscale_is_scaled_not_clipped():
    arr = np.full((8, 8), 257 * 100, np.uint16)
    arr[:, 4:] = 65535
    im = Image.fromarray(arr)
    assert im.mode.startswith("I;16")
    out = _decode(im)
    assert (out[:, :4] == 100).all() and (out[:, 4:] == 255).all()


def test_animated_gif_uses_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=50)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    out = decode_image(data, 8)
    assert (out == (255, 0, 0)).all()


def test_exif_orientation_is_applied():
    # Stored 8 wide x 16 tall, red above blue; orientation 6 means "rotate 90 degrees clockwise
    # to display", which puts red on the right. Centre-cropping the displayed 16x8 keeps both.
    stored = Image.new("RGB", (8, 16), (255, 0, 0))
    stored.paste((0, 0, 255), (0, 8, 8, 16))
    exif = Image.Exif()
    exif[0x0112] = 6
    out = _decode(stored, fmt="JPEG", quality=95, exif=exif)
    assert out[4, 1, 2] > 200 and out[4, 1, 0] < 60  # left: blue
    assert out[4, 6, 0] > 200 and out[4, 6, 2] < 60  # right: red


def test_large_non_square_is_centre_cropped_then_resized():
    # 400x200, red left half, blue right half: the centre 200x200 is half red, half blue.
    im = Image.new("RGB", (400, 200), (255, 0, 0))
    im.paste((0, 0, 255), (200, 0, 400, 200))
    out = _decode(im, size=16)
    assert (out[:, :7] == (255, 0, 0)).all() and (out[:, 9:] == (0, 0, 255)).all()
    # Tall: the centre crop of 100x300 with a green middle third is all green.
    tall = Image.new("RGB", (100, 300), (255, 0, 0))
    tall.paste((0, 255, 0), (0, 100, 100, 200))
    assert (_decode(tall, size=16, fmt="JPEG", quality=95)[..., 1] > 240).all()


def test_large_jpeg_decodes_and_small_image_is_upscaled():
    big = Image.new("RGB", (1600, 1200), (20, 200, 20))
    assert np.abs(_decode(big, size=32, fmt="JPEG").astype(int) - (20, 200, 20)).max() <= 4
    assert (_decode(Image.new("RGB", (4, 4), (9, 9, 9)), size=32) == 9).all()


def test_exact_size_rgb_passes_through_bit_exact():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert (decode_image(encode(Image.fromarray(arr)), 32) == arr).all()
    jpeg = encode(Image.fromarray(arr), "JPEG", quality=90)
    assert (decode_image(jpeg, 32) == np.array(Image.open(io.BytesIO(jpeg)))).all()


def test_path_source(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8), (1, 2, 3)).save(path)
    assert (decode_image(path, 8) == (1, 2, 3)).all()
    assert (decode_image(str(path), 8) == (1, 2, 3)).all()
    with pytest.raises(DataError, match="missing.png: cannot read file"):
        decode_image(tmp_path / "missing.png", 8)


@pytest.mark.parametrize(
    "data, detail",
    [(b"", "empty file"), (b"not an image at all", "not a format Pillow recognises")],
)
def test_garbage_is_a_data_error_naming_the_file(data, detail):
    with pytest.raises(DataError, match=f"^cat/1.jpg: not a readable image \\({detail}\\)$"):
        decode_image(data, 8, "cat/1.jpg")


def test_truncated_jpeg_is_a_data_error():
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")
    with pytest.raises(DataError, match=r"^dog/2.jpg: not a readable image \(.*truncated"):
        decode_image(data[: len(data) // 2], 8, "dog/2.jpg")


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    "side, size",
    [(40, "40x40 = 1600 pixels"), (100, "10000 pixels")],  # above Pillow's warning; its error
)
def test_decompression_bomb_is_refused(monkeypatch, side, size):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    data = encode(Image.new("RGB", (side, side)))
    with pytest.raises(DataError, match="big.png: image too large .*MAX_IMAGE_PIXELS") as e:
        decode_image(data, 8, "big.png")
    # One limit, ours, stated once (Pillow's own text quotes twice it), with the image's size.
    msg = str(e.value)
    assert f"({size}, over the limit of 1000 pixels" in msg
    assert msg.count("limit") == 1 and "2000" not in msg


@pytest.mark.parametrize(
    "kwargs",
    [{"lossless": True}, {"quality": 80}, {"quality": 80, "exif": b"Exif\0\0II*\0"}],
    ids=["VP8L", "VP8", "VP8X"],
)
def test_webp_size_is_read_from_its_header(kwargs):
    # Pillow reads a whole WebP to open it, so images.py reads the size from the RIFF header.
    for width, height in [(37, 53), (1000, 3), (16383, 1)]:
        data = encode(Image.new("RGB", (width, height), (9, 9, 9)), "WEBP", **kwargs)
        assert images._webp_size(data[:30]) == (width, height) == Image.open(io.BytesIO(data)).size
    assert images._webp_size(b"RIFF\0\0\0\0WAVEfmt " + bytes(20)) is None


def test_file_size_bound_follows_the_pixels():
    head = encode(Image.new("RGB", (64, 48)))
    limit = images.HEADER_BYTES + images.BYTES_PER_PIXEL * 64 * 48
    images.check_file_size(head, limit, "ok.png")
    with pytest.raises(DataError, match=f"^big.png: {limit + 1} bytes, more than a 64x48 image"):
        images.check_file_size(head, limit + 1, "big.png")
    plain = b"P3\n64 48\n65535\n"  # ASCII PNM spells out each sample
    images.check_file_size(plain, images.HEADER_BYTES + 20 * 64 * 48, "plain.ppm")
    with pytest.raises(DataError, match="no image header in its first 4 MiB"):
        images.check_file_size(b"\0" * 100, images.HEADER_BYTES + 1, "fake.jpg")


def test_extensions_and_size_check():
    assert {".jpg", ".jpeg", ".png"} <= IMAGE_EXTENSIONS
    assert all(e == e.lower() and e.startswith(".") for e in IMAGE_EXTENSIONS)
    with pytest.raises(ValueError):
        decode_image(b"x", 0)


def _modes(rng: np.random.Generator, width: int, height: int) -> dict[str, Image.Image]:
    """A noisy image in each mode decode_image meets, with alpha that varies."""
    rgba = Image.fromarray(rng.integers(0, 256, (height, width, 4), dtype=np.uint8), "RGBA")
    wide = rng.integers(0, 65536, (height, width), dtype=np.uint16)
    palette = rgba.convert("RGB").quantize(64)
    palette.info["transparency"] = 3
    return {
        "RGBA": rgba,
        "RGB": rgba.convert("RGB"),
        "LA": rgba.convert("LA"),
        "L": rgba.convert("L"),
        "1": rgba.convert("1"),
        "P": palette,
        "CMYK": rgba.convert("CMYK"),
        "I;16": Image.fromarray(wide),
        "F": Image.fromarray(wide.astype(np.float32) / 200),
    }


@pytest.mark.parametrize("width, height", [(301, 203), (203, 301), (240, 240)])
def test_large_images_convert_in_tiles_to_the_same_bits(monkeypatch, width, height):
    """The tile-by-tile conversion of large images (pixels.py) equals converting them whole,
    for every mode, crop and reduction factor (1, 2, 6, and an enlargement)."""
    rng = np.random.default_rng(width)
    for mode, image in _modes(rng, width, height).items():
        assert image.mode == mode
        for size in (8, 32, 100, 400):
            monkeypatch.setattr(pixels, "LARGE_PIXELS", 1 << 40)
            whole = pixels.square_rgb(image, size)
            monkeypatch.setattr(pixels, "LARGE_PIXELS", 0)
            monkeypatch.setattr(pixels, "TILE_PIXELS", 3000)  # tiles of 54 or fewer, last short
            assert np.array_equal(pixels.square_rgb(image, size), whole), (mode, size)

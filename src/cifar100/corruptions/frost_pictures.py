"""The frost pictures of ImageNet-C, read from the installed `imagecorruptions` package.

They are photographs we do not ship; `pip install imagecorruptions` (or cifar100[robustness])
brings them.
"""

import functools
import importlib.util
import math
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError

# The reference's list; its np.random.randint(5) never picks the sixth.
FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")


def frost_dir() -> Path:
    """The folder of the frost pictures inside the installed imagecorruptions package."""
    # find_spec, not import: the package's own import pulls in OpenCV and scikit-image.
    spec = importlib.util.find_spec("imagecorruptions")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "frost needs the frost pictures of the imagecorruptions package: "
            "pip install imagecorruptions"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "frost"
    if not all((folder / f).is_file() for f in FILES):
        raise DataError(
            f"frost pictures missing in {folder}: pip install --force-reinstall imagecorruptions"
        )
    return folder


@functools.lru_cache(maxsize=6)
def _picture(index: int) -> np.ndarray:
    # RGB, any alpha dropped (not composited), as cv2.imread then BGR -> RGB gives it.
    with Image.open(frost_dir() / FILES[index]) as im:
        return np.asarray(im.convert("RGB"))


@functools.lru_cache(maxsize=32)
def scaled_picture(index: int, height: int, width: int, scale: float | None) -> np.ndarray:
    """Frost picture `index`, scaled as the table says, large enough to crop height x width.

    scale None (imagecorruptions): resize so both sides cover the image, times 1.1, bicubic.
    scale 0.2 (make_cifar_c.py): cv2.resize(fx=fy=0.2), whose bilinear weights at a 1/5 scale
    fall on whole pixels, so it is the pixels 2, 7, 12, ... of each row and column. A picture
    that this leaves smaller than the image falls back to the fitting rule.
    """
    pic = _picture(index)
    ph, pw = pic.shape[:2]
    if scale is not None:
        step = round(1 / scale)
        if abs(1 / scale - step) < 1e-9:
            small = pic[step // 2 :: step, step // 2 :: step][
                : round(ph * scale), : round(pw * scale)
            ]
        else:
            small = resize_bicubic(pic, round(ph * scale), round(pw * scale))
        if small.shape[0] > height and small.shape[1] > width:
            return small
    factor = max(1.0, height / ph, width / pw) * 1.1
    return resize_bicubic(pic, math.ceil(ph * factor), math.ceil(pw * factor))


def _cubic_taps(src: int, dst: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (dst, 4) and weights of OpenCV's bicubic resize (a = -0.75, edges clamped)."""
    scale = src / dst
    pos = (np.arange(dst) + 0.5) * scale - 0.5
    base = np.floor(pos)
    t = pos - base
    a = -0.75
    w0 = ((a * (t + 1) - 5 * a) * (t + 1) + 8 * a) * (t + 1) - 4 * a
    w1 = ((a + 2) * t - (a + 3)) * t * t + 1
    w2 = ((a + 2) * (1 - t) - (a + 3)) * (1 - t) * (1 - t) + 1
    w3 = 1 - w0 - w1 - w2
    idx = np.clip(base.astype(np.int64)[:, None] + np.arange(-1, 3), 0, src - 1)
    return idx, np.stack([w0, w1, w2, w3], axis=1)


def resize_bicubic(pic: np.ndarray, height: int, width: int) -> np.ndarray:
    """OpenCV-style bicubic resize of an (H, W, 3) uint8 picture, rounded back to uint8."""
    ri, rw = _cubic_taps(pic.shape[0], height)
    ci, cw = _cubic_taps(pic.shape[1], width)
    rows = np.einsum("hk,hkwc->hwc", rw, pic[ri].astype(np.float64))
    out = np.einsum("wk,hwkc->hwc", cw, rows[:, ci])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)

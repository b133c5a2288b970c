"""Severity tables: the parameters of each corruption at severities 1..5, per table.

"cifar": CIFAR-10-C (and CIFAR-100-C), from make_cifar_c.py in the hendrycks/robustness repository
(ImageNet-C/create_c/make_cifar_c.py), written for 32x32 images.
"imagenet": the parameters of the `imagecorruptions` package 1.1.2
(imagecorruptions/corruptions.py), which are ImageNet-C's, for images of any size >= 32 px.

Where the two scripts differ in more than numbers, the entry carries the difference as a field
(frost's picture scale, pixelate's upsampling filter, elastic_transform's affine step).
"""

from typing import Any, NamedTuple


class ZoomRange(NamedTuple):
    """Zoom factors np.arange(start, stop, step), kept as its arguments so the floats match, and
    which part of each zoom is kept ("top-left": imagecorruptions, "centre": make_cifar_c.py)."""

    start: float
    stop: float
    step: float
    trim: str = "top-left"


class MotionBlur(NamedTuple):
    """ImageMagick's motion blur radius and sigma; rounded: the result rounded to 8 bits, as
    make_cifar_c.py read it back from ImageMagick as a PNG (imagecorruptions truncates)."""

    radius: int
    sigma: float
    rounded: bool


class Snow(NamedTuple):
    """Flakes ~ N(mean, std), zoomed, cut below threshold, streaked by a motion blur (radius,
    sigma), over the image kept at weight. cifar: the make_cifar_c.py steps, where the flakes pass
    through ImageMagick as an 8-bit picture, trimmed to the image first; else imagecorruptions'."""

    mean: float
    std: float
    zoom: float
    threshold: float
    radius: int
    sigma: float
    weight: float
    cifar: bool


class Frost(NamedTuple):
    """Image weight, frost weight, and the frost pictures' scale (None: fit the image, x1.1)."""

    image: float
    frost: float
    scale: float | None


class Pixelate(NamedTuple):
    """Downscale factor (box filter) and the filter that scales back up ("box" or "nearest")."""

    factor: float
    upsample: str


class Elastic(NamedTuple):
    """Elastic displacement: alpha * smooth(uniform(-max_shift, max_shift) * H), smoothed with a
    Gaussian of sigma * (H, W); affine: corner jitter (fraction of H) of a random affine warp done
    first, or None for no affine step. Fractions of the image side so both tables scale with it."""

    alpha: float
    sigma: float
    max_shift: float
    affine: float | None


def _cifar_elastic(alpha: float, sigma: float, affine: float) -> Elastic:
    # make_cifar_c.py: c = (IMSIZE*alpha, IMSIZE*sigma, IMSIZE*affine), dx = uniform(-1, 1) * c[0]
    # smoothed by sigma c[1]; so the shift is alpha * uniform(-IMSIZE, IMSIZE).
    return Elastic(alpha, sigma, 1.0, affine)


TABLES: dict[str, dict[str, tuple[Any, ...]]] = {
    "cifar": {
        "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
        "shot_noise": (500, 250, 100, 75, 50),
        "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
        # (disk radius, anti-alias Gaussian sigma)
        "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
        # (sigma, max pixel shift, iterations)
        "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
        "motion_blur": tuple(
            MotionBlur(r, s, rounded=True) for r, s in ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5))
        ),
        "zoom_blur": (
            ZoomRange(1, 1.06, 0.01, "centre"),
            ZoomRange(1, 1.11, 0.01, "centre"),
            ZoomRange(1, 1.16, 0.01, "centre"),
            ZoomRange(1, 1.21, 0.01, "centre"),
            ZoomRange(1, 1.26, 0.01, "centre"),
        ),
        "snow": (
            Snow(0.1, 0.2, 1, 0.6, 8, 3, 0.95, cifar=True),
            Snow(0.1, 0.2, 1, 0.5, 10, 4, 0.9, cifar=True),
            Snow(0.15, 0.3, 1.75, 0.55, 10, 4, 0.9, cifar=True),
            Snow(0.25, 0.3, 2.25, 0.6, 12, 6, 0.85, cifar=True),
            Snow(0.3, 0.3, 1.25, 0.65, 14, 12, 0.8, cifar=True),
        ),
        # make_cifar_c.py shrinks the frost pictures to 0.2 of their size before cropping 32x32.
        "frost": (
            Frost(1, 0.2, 0.2),
            Frost(1, 0.3, 0.2),
            Frost(0.9, 0.4, 0.2),
            Frost(0.85, 0.4, 0.2),
            Frost(0.75, 0.45, 0.2),
        ),
        # (fog strength, wibble decay of the plasma fractal)
        "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
        "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
        "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
        "elastic_transform": (
            _cifar_elastic(0, 0, 0.08),
            _cifar_elastic(0.05, 0.2, 0.07),
            _cifar_elastic(0.08, 0.06, 0.06),
            _cifar_elastic(0.1, 0.04, 0.05),
            _cifar_elastic(0.1, 0.03, 0.03),
        ),
        "pixelate": (
            Pixelate(0.95, "box"),
            Pixelate(0.9, "box"),
            Pixelate(0.85, "box"),
            Pixelate(0.75, "box"),
            Pixelate(0.65, "box"),
        ),
        "jpeg_compression": (80, 65, 58, 50, 40),
    },
    "imagenet": {
        "gaussian_noise": (0.08, 0.12, 0.18, 0.26, 0.38),
        "shot_noise": (60, 25, 12, 5, 3),
        "impulse_noise": (0.03, 0.06, 0.09, 0.17, 0.27),
        "defocus_blur": ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
        "glass_blur": ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
        "motion_blur": tuple(
            MotionBlur(r, s, rounded=False)
            for r, s in ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15))
        ),
        "zoom_blur": (
            ZoomRange(1, 1.11, 0.01),
            ZoomRange(1, 1.16, 0.01),
            ZoomRange(1, 1.21, 0.02),
            ZoomRange(1, 1.26, 0.02),
            ZoomRange(1, 1.31, 0.03),
        ),
        "snow": (
            Snow(0.1, 0.3, 3, 0.5, 10, 4, 0.8, cifar=False),
            Snow(0.2, 0.3, 2, 0.5, 12, 4, 0.7, cifar=False),
            Snow(0.55, 0.3, 4, 0.9, 12, 8, 0.7, cifar=False),
            Snow(0.55, 0.3, 4.5, 0.85, 12, 8, 0.65, cifar=False),
            Snow(0.55, 0.3, 2.5, 0.85, 12, 12, 0.55, cifar=False),
        ),
        "frost": (
            Frost(1, 0.4, None),
            Frost(0.8, 0.6, None),
            Frost(0.7, 0.7, None),
            Frost(0.65, 0.7, None),
            Frost(0.6, 0.75, None),
        ),
        "fog": ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)),
        "brightness": (0.1, 0.2, 0.3, 0.4, 0.5),
        "contrast": (0.4, 0.3, 0.2, 0.1, 0.05),
        "elastic_transform": tuple(
            Elastic(250 * a, 0.01, 0.005, None) for a in (0.05, 0.065, 0.085, 0.1, 0.12)
        ),
        "pixelate": (
            Pixelate(0.6, "nearest"),
            Pixelate(0.5, "nearest"),
            Pixelate(0.4, "nearest"),
            Pixelate(0.3, "nearest"),
            Pixelate(0.25, "nearest"),
        ),
        "jpeg_compression": (25, 18, 15, 10, 7),
    },
}

# Images up to this side use the "cifar" table when no table is named.
CIFAR_TABLE_MAX_SIDE = 64

"""Numpy filters shared by the corruptions, batched over the first axis (N, H, W[, C]).

Each follows the arithmetic of the library the reference scripts called (scipy.ndimage's Gaussian
filter and zoom, ImageMagick's motion blur) so results agree to rounding, not only in spirit.
"""

import math

import numpy as np

# scipy.ndimage boundary modes -> numpy.pad modes
_PAD_MODES = {"nearest": "edge", "reflect": "symmetric", "mirror": "reflect"}


def gaussian_weights(sigma: float, truncate: float) -> np.ndarray:
    """scipy.ndimage.gaussian_filter1d's kernel: radius int(truncate * sigma + 0.5), sums to 1."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1)
    w = np.exp(-0.5 / (float(sigma) * float(sigma)) * x**2)
    return w / w.sum()


def correlate_axis(a: np.ndarray, weights: np.ndarray, axis: int, mode: str) -> np.ndarray:
    """Correlate `a` with 1-D `weights` along `axis`, the edges extended as scipy's `mode`."""
    r = len(weights) // 2
    if r == 0:
        return a * weights[0]
    pad = [(0, 0)] * a.ndim
    pad[axis] = (r, r)
    padded = np.pad(a, pad, mode=_PAD_MODES[mode])
    n = a.shape[axis]
    out = np.zeros(a.shape, dtype=np.result_type(a.dtype, np.float64))
    for k, w in enumerate(weights):
        out += w * np.take(padded, np.arange(k, k + n), axis=axis)
    return out


def gaussian_filter(
    a: np.ndarray, sigma: float | tuple[float, float], mode: str = "nearest", truncate: float = 4.0
) -> np.ndarray:
    """skimage.filters.gaussian over axes 1 and 2 of a batch (N, H, W[, C]), in float64."""
    sigmas = (sigma, sigma) if np.isscalar(sigma) else sigma
    out = np.asarray(a, dtype=np.float64)
    for axis, s in zip((1, 2), sigmas):
        if s > 0:  # scipy skips an axis with sigma 0
            out = correlate_axis(out, gaussian_weights(s, truncate), axis, mode)
    return out


def correlate2d(a: np.ndarray, kernel: np.ndarray, mode: str) -> np.ndarray:
    """Correlate each image of (N, H, W[, C]) with a 2-D kernel (odd sides), in float64.

    Rows and columns of the kernel that are all zero are dropped first: the small disks of the
    cifar table sit in a 17x17 grid that is mostly zero, and a zero tap adds nothing.
    """
    r = kernel.shape[0] // 2
    rows = np.flatnonzero(np.abs(kernel).sum(axis=1))
    cols = np.flatnonzero(np.abs(kernel).sum(axis=0))
    pad = [(0, 0)] * a.ndim
    pad[1] = pad[2] = (r, r)
    padded = np.pad(np.asarray(a, dtype=np.float64), pad, mode=_PAD_MODES[mode])
    h, w = a.shape[1:3]
    out = np.zeros(padded.shape[:1] + (h, w) + padded.shape[3:])
    for i in range(rows.min(), rows.max() + 1) if len(rows) else ():
        for j in range(cols.min(), cols.max() + 1):
            if kernel[i, j] != 0:
                out += float(kernel[i, j]) * padded[:, i : i + h, j : j + w]
    return out


def _zoom_matrix(n: int, size: int) -> np.ndarray:
    """(size, n) weights of a linear resampling to `size` samples, end points aligned (scipy's
    zoom, order 1): output j reads input j * (n - 1) / (size - 1)."""
    pos = np.arange(size) * ((n - 1) / (size - 1)) if size > 1 else np.zeros(1)
    lo = np.minimum(np.floor(pos).astype(np.int64), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    frac = pos - lo
    m = np.zeros((size, n))
    m[np.arange(size), lo] += 1 - frac
    m[np.arange(size), hi] += frac
    return m


def clipped_zoom(a: np.ndarray, factor: float, trim: str | None = "top-left") -> np.ndarray:
    """Zoom the centre of each image in (N, H, W[, C]) by `factor`, cropped back to H x W.

    Crop ceil(side / factor) from the centre, scale it with scipy's linear zoom (output
    round(crop * factor), a pixel or two larger than the image) and keep H x W of it: the
    top-left (imagecorruptions), the centre (make_cifar_c.py), or all of it (trim None).
    """
    h, w = a.shape[1:3]
    ch, cw = math.ceil(h / float(factor)), math.ceil(w / float(factor))
    top, left = (h - ch) // 2, (w - cw) // 2
    crop = a[:, top : top + ch, left : left + cw]
    rows = _zoom_matrix(ch, int(round(ch * factor)))
    cols = _zoom_matrix(cw, int(round(cw * factor)))
    # Two matrix products, one per axis, over images moved to (N, ..., H, W): far faster than
    # gathering neighbours.
    planes = np.ascontiguousarray(np.moveaxis(crop, (1, 2), (-2, -1)), dtype=np.float64)
    out = np.moveaxis(rows @ planes @ cols.T, (-2, -1), (1, 2))
    if trim is None:
        return out
    top, left = ((out.shape[1] - h) // 2, (out.shape[2] - w) // 2) if trim == "centre" else (0, 0)
    return out[:, top : top + h, left : left + w]


def directional_blur(a: np.ndarray, radius: int, sigma: float, angles: np.ndarray) -> np.ndarray:
    """ImageMagick's motion blur (as ported by imagecorruptions) of each image at its own angle.

    A one-sided Gaussian kernel of width 2 * radius + 1 along the angle; taps beyond the image
    border repeat the edge pixel, and taps from the first one that leaves the image are dropped.
    Returns float64.
    """
    n, h, w = a.shape[:3]
    width = 2 * radius + 1
    kernel = np.exp(-(np.arange(width) ** 2) / (2 * sigma**2)) / (np.sqrt(2 * np.pi) * sigma)
    kernel = kernel / kernel.sum()
    rows, cols = np.arange(h), np.arange(w)
    batch = np.arange(n)[:, None, None]
    out = np.zeros(a.shape, dtype=np.float64)
    live = np.ones(n, dtype=bool)  # images whose blur has not yet run off the image
    for i in range(width):
        dy = np.empty(n, dtype=np.int64)
        dx = np.empty(n, dtype=np.int64)
        for j, angle in enumerate(angles):
            py, px = width * math.sin(math.radians(angle)), width * math.cos(math.radians(angle))
            hyp = math.hypot(py, px)
            dy[j] = -math.ceil(i * py / hyp - 0.5)
            dx[j] = -math.ceil(i * px / hyp - 0.5)
        live &= (np.abs(dy) < h) & (np.abs(dx) < w)
        if not live.any():
            break
        r = np.clip(rows[None, :] - dy[:, None], 0, h - 1)[:, :, None]
        c = np.clip(cols[None, :] - dx[:, None], 0, w - 1)[:, None, :]
        weight = np.where(live, kernel[i], 0.0).reshape((n,) + (1,) * (a.ndim - 1))
        out = out + weight * a[batch, r, c]
    return out


def _reflect_index(i: np.ndarray, n: int) -> np.ndarray:
    """Fold indices into 0..n-1 by half-sample symmetric reflection (scipy's "reflect")."""
    i = np.mod(i, 2 * n)
    return np.where(i >= n, 2 * n - 1 - i, i)


def sample_bilinear(a: np.ndarray, y: np.ndarray, x: np.ndarray, mode: str) -> np.ndarray:
    """Sample each image of (N, H, W, C) at float coordinates y, x of shape (N, H, W).

    mode "reflect" (scipy's map_coordinates) or "mirror" (OpenCV's BORDER_REFLECT_101).
    """
    n, h, w = a.shape[:3]
    y0, x0 = np.floor(y), np.floor(x)
    fy, fx = (y - y0)[..., None], (x - x0)[..., None]
    y0, x0 = y0.astype(np.int64), x0.astype(np.int64)
    if mode == "reflect":
        ys = (_reflect_index(y0, h), _reflect_index(y0 + 1, h))
        xs = (_reflect_index(x0, w), _reflect_index(x0 + 1, w))
    else:
        ys = (_mirror_index(y0, h), _mirror_index(y0 + 1, h))
        xs = (_mirror_index(x0, w), _mirror_index(x0 + 1, w))
    b = np.arange(n)[:, None, None]
    top = a[b, ys[0], xs[0]] * (1 - fx) + a[b, ys[0], xs[1]] * fx
    bottom = a[b, ys[1], xs[0]] * (1 - fx) + a[b, ys[1], xs[1]] * fx
    return top * (1 - fy) + bottom * fy


def _mirror_index(i: np.ndarray, n: int) -> np.ndarray:
    """Fold indices into 0..n-1 reflecting about the edge pixels (OpenCV's BORDER_REFLECT_101)."""
    i = np.mod(i, 2 * n - 2)
    return np.where(i >= n, 2 * n - 2 - i, i)

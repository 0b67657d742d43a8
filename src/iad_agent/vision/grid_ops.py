"""Small numpy operations on feature grids and patch maps, in place of torch's and scipy's.

An inspection with the packaged backbone imports neither torch (~2 s) nor ``scipy.ndimage``
(~0.5 s): these are the few operations it took from them, each equal to the original up to
float rounding (checked in ``tests/test_speed.py``).
"""

from __future__ import annotations

import numpy as np


def resize_bilinear(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(N, H, W, C)`` → ``(N, h, w, C)``, bilinear, ``align_corners=False`` (as torch's ``interpolate``)."""
    n, hi, wi, c = x.shape
    ho, wo = size
    if (hi, wi) == (ho, wo):
        return x
    y0, y1, ly = _axis(hi, ho)
    x0, x1, lx = _axis(wi, wo)
    rows = x[:, y0] * (1 - ly)[None, :, None, None] + x[:, y1] * ly[None, :, None, None]
    return (rows[:, :, x0] * (1 - lx)[None, None, :, None] + rows[:, :, x1] * lx[None, None, :, None]).astype(np.float32)


def _axis(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    scale = np.float32(n_in / n_out)
    src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
    i0 = src.astype(np.int64)
    i1 = i0 + (i0 < n_in - 1)
    return i0, i1, (src - i0).astype(np.float32)


def avg_pool(x: np.ndarray, k: int) -> np.ndarray:
    """``k × k`` mean over ``(N, H, W, C)``, stride 1, zero padding ``k // 2`` not counted (torch's ``count_include_pad=False``)."""
    p = k // 2
    n, h, w, c = x.shape
    xp = np.zeros((n, h + 2 * p, w + 2 * p, c), dtype=np.float32)
    xp[:, p:p + h, p:p + w] = x
    total = np.zeros((n, h, w, c), dtype=np.float32)
    for dy in range(k):
        for dx in range(k):
            total += xp[:, dy:dy + h, dx:dx + w]
    ones = np.zeros((h + 2 * p, w + 2 * p), dtype=np.float32)
    ones[p:p + h, p:p + w] = 1
    count = sum(ones[dy:dy + h, dx:dx + w] for dy in range(k) for dx in range(k))
    return total / count[None, :, :, None]


def upsample(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """A 2-D map resized bilinearly to ``(height, width)`` (torch's ``interpolate``, ``align_corners=False``)."""
    return resize_bilinear(np.asarray(grid, dtype=np.float32)[None, :, :, None], (height, width))[0, :, :, 0]


def gaussian_filter(x: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """``scipy.ndimage.gaussian_filter(x, sigma)`` of a 2-D float array (mode ``reflect``), same dtype.

    Each axis is filtered in float64 and stored in the input's dtype, as scipy does.
    """
    out = np.asarray(x)
    dtype = out.dtype if out.dtype.kind == "f" else np.float64
    radius = int(truncate * float(sigma) + 0.5)
    if radius == 0:
        return out.astype(dtype, copy=True)
    t = np.arange(-radius, radius + 1, dtype=np.float64)
    weights = np.exp(-0.5 / (float(sigma) * float(sigma)) * t * t)
    weights /= weights.sum()
    for axis in range(out.ndim):
        out = _correlate1d(out, weights, axis, radius).astype(dtype)
    return out


def _correlate1d(x: np.ndarray, weights: np.ndarray, axis: int, radius: int) -> np.ndarray:
    n = x.shape[axis]
    # scipy's "reflect" (d c b a | a b c d | d c b a) = numpy's "symmetric", repeated for short axes
    index = np.arange(-radius, n + radius)
    period = 2 * n
    index = np.mod(index, period)
    index = np.where(index >= n, period - 1 - index, index)
    padded = np.take(np.asarray(x, dtype=np.float64), index, axis=axis)
    out = np.zeros(x.shape, dtype=np.float64)
    for j, wgt in enumerate(weights):
        out += wgt * np.take(padded, np.arange(j, j + n), axis=axis)
    return out


def region_at(mask: np.ndarray, seed: tuple[int, int]) -> np.ndarray:
    """The 4-connected region of ``mask`` that holds ``seed`` (``scipy.ndimage.label``'s region of it).

    When ``mask[seed]`` is False, every pixel outside the mask (label's background, label 0, as
    ``labels == labels[seed]`` gives it). For patch maps (tens of rows): grown by dilation.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask[seed]:
        return ~mask
    region = np.zeros_like(mask)
    region[seed] = True
    while True:
        grown = region.copy()
        grown[1:] |= region[:-1]
        grown[:-1] |= region[1:]
        grown[:, 1:] |= region[:, :-1]
        grown[:, :-1] |= region[:, 1:]
        grown &= mask
        if (grown == region).all():
            return region
        region = grown

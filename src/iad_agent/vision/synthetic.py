"""Synthetic defects made from good images only (CutPaste, DRAEM-style noise patches, scratches, blur).

At registration no defect has been seen; these stand-ins let the product measure, from its good
images alone, which settings separate anomalies from good parts (e.g. how much the
self-similarity evidence should count). Each function returns the altered image and the
defect's boolean mask (image size), deterministic for a given ``rng``.

* ``cutpaste`` — Li et al., CVPR 2021: a patch of the image, jittered, pasted elsewhere.
* ``noise_patch`` — DRAEM (Zavrtanik et al., ICCV 2021): a blob from thresholded smooth
  (Perlin-like) noise, filled with a foreign texture blended into the image.
* ``scratch`` — a thin dark or bright curve (cracks, scratches: the KolektorSDD kind of defect).
* ``blur_patch`` — a blob of the image blurred and re-lit (stains, missing texture).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy.ndimage import gaussian_filter, zoom


def _blob_mask(w: int, h: int, rng: np.random.Generator, area: tuple[float, float] = (0.005, 0.04)) -> np.ndarray:
    """A connected blob (thresholded smooth noise inside a random ellipse) covering ``area`` of the image."""
    frac = rng.uniform(*area)
    rw = max(4, int(np.sqrt(frac * w * h) * rng.uniform(0.6, 1.6)))
    rh = max(4, int(frac * w * h / rw))
    rw, rh = min(rw, w - 2), min(rh, h - 2)
    x0, y0 = int(rng.integers(0, w - rw)), int(rng.integers(0, h - rh))
    coarse = rng.standard_normal((max(2, rh // 8), max(2, rw // 8)))
    noise = zoom(coarse, (rh / coarse.shape[0], rw / coarse.shape[1]), order=1)[:rh, :rw]
    noise = gaussian_filter(noise, 1.0)
    yy, xx = np.mgrid[0:noise.shape[0], 0:noise.shape[1]]
    ell = ((yy - rh / 2) / (rh / 2)) ** 2 + ((xx - rw / 2) / (rw / 2)) ** 2
    local = (noise + 1.2 * (1 - ell) > 0.6) & (ell < 1)
    mask = np.zeros((h, w), bool)
    mask[y0:y0 + local.shape[0], x0:x0 + local.shape[1]] = local
    if not mask.any():
        mask[y0 + rh // 2 - 1:y0 + rh // 2 + 2, x0 + rw // 2 - 1:x0 + rw // 2 + 2] = True
    return mask


def cutpaste(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """CutPaste: a rectangle of the image, re-lit and possibly rotated, pasted at another place."""
    img = img.convert("RGB")
    w, h = img.size
    frac = rng.uniform(0.01, 0.05)
    aspect = rng.uniform(0.3, 3.3)
    pw = int(np.clip(np.sqrt(frac * w * h * aspect), 4, w // 2))
    ph = int(np.clip(frac * w * h / pw, 4, h // 2))
    sx, sy = int(rng.integers(0, w - pw)), int(rng.integers(0, h - ph))
    patch = img.crop((sx, sy, sx + pw, sy + ph))
    patch = Image.eval(patch, lambda v, g=float(rng.uniform(0.7, 1.3)): int(min(255, v * g)))
    if rng.random() < 0.5:
        patch = patch.transpose(Image.Transpose.ROTATE_90).resize((pw, ph))
    tx, ty = int(rng.integers(0, w - pw)), int(rng.integers(0, h - ph))
    out = img.copy()
    out.paste(patch, (tx, ty))
    mask = np.zeros((h, w), bool)
    mask[ty:ty + ph, tx:tx + pw] = True
    return out, mask


def _bbox(mask: np.ndarray, margin: int) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` of ``mask``'s true pixels grown by ``margin``, clipped to the mask."""
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    return (max(0, int(xs.min()) - margin), max(0, int(ys.min()) - margin),
            min(w, int(xs.max()) + 1 + margin), min(h, int(ys.max()) + 1 + margin))


def _blur_margin(radius: float) -> int:
    """Pixels around a region that a PIL Gaussian blur of ``radius`` reads (its three box passes, with room)."""
    return int(np.ceil(3 * radius)) + 8


def _pasted(img: Image.Image, region: np.ndarray, box: tuple[int, int, int, int]) -> Image.Image:
    out = img.copy()
    out.paste(Image.fromarray(region), box[:2])
    return out


def noise_patch(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """DRAEM-style: a smooth-noise blob filled with a foreign texture (a scrambled, re-coloured view).

    The foreign texture is the image turned by 180° (and, at random, mirrored top to bottom),
    blurred and re-coloured; only the blob's neighbourhood is computed, so a 12-megapixel photo
    costs what its defect covers, not the whole image.
    """
    img = img.convert("RGB")
    w, h = img.size
    mask = _blob_mask(w, h, rng)
    radius = rng.uniform(0, 2)
    flip = rng.random() < 0.5
    gain, shift = rng.uniform(0.5, 1.5), rng.uniform(-60, 60, 3)
    beta = rng.uniform(0.0, 0.6)  # DRAEM's opacity: 0 = the foreign texture only
    box = _bbox(mask, 0)
    x0, y0, x1, y1 = box
    # the foreign texture at (y, x) is B[y, x] (B[h − 1 − y, x] when mirrored), B = the turned image blurred:
    # B is read over the box's columns and rows ry0 … ry1, from the turned image around them (the blur's margin)
    m = _blur_margin(radius)
    ry0, ry1 = (h - y1, h - y0) if flip else (y0, y1)
    a, b, c0, c1 = max(0, ry0 - m), min(h, ry1 + m), max(0, x0 - m), min(w, x1 + m)
    turned = img.crop((w - c1, h - b, w - c0, h - a)).transpose(Image.Transpose.ROTATE_180)  # = turned image[a:b, c0:c1]
    source = np.asarray(turned.filter(ImageFilter.GaussianBlur(radius)), np.float32)[ry0 - a:ry1 - a, x0 - c0:x1 - c0]
    source = source[::-1] if flip else source
    source = np.clip(source * gain + shift, 0, 255)
    arr = np.asarray(img.crop(box), np.float32)
    local = mask[y0:y1, x0:x1, None]
    out = np.where(local, beta * arr + (1 - beta) * source, arr)
    return _pasted(img, out.astype(np.uint8), box), mask


def _scratch_mask(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """The pixels of a thin random curve (seven points, a gently turning heading) across a ``w``×``h`` image."""
    length = rng.uniform(0.1, 0.35) * max(w, h)
    x, y = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    angle = rng.uniform(0, np.pi)
    pts = [(x, y)]
    for _ in range(6):
        angle += rng.normal(0, 0.3)
        x, y = x + np.cos(angle) * length / 6, y + np.sin(angle) * length / 6
        pts.append((float(np.clip(x, 0, w - 1)), float(np.clip(y, 0, h - 1))))
    width = max(1, int(round(max(w, h) * rng.uniform(0.003, 0.008))))
    layer = Image.new("L", (w, h), 0)
    ImageDraw.Draw(layer).line(pts, fill=255, width=width)
    return np.asarray(layer) > 0


def scratch(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """A thin curved line, darker or brighter than the surface (scratch, crack)."""
    img = img.convert("RGB")
    w, h = img.size
    mask = _scratch_mask(w, h, rng)
    mean = float(np.asarray(img).mean())
    value = rng.uniform(0, 0.25) * 255 if mean > 100 or rng.random() < 0.5 else rng.uniform(0.75, 1.0) * 255
    strength = rng.uniform(0.6, 1.0)
    box = _bbox(mask, 8)  # the line's soft edge (σ 0.7) reaches a few pixels out
    x0, y0, x1, y1 = box
    alpha = gaussian_filter(mask[y0:y1, x0:x1].astype(np.float32), 0.7)[..., None] * strength
    arr = np.asarray(img.crop(box), np.float32)
    out = arr * (1 - alpha) + value * alpha
    return _pasted(img, np.clip(out, 0, 255).astype(np.uint8), box), mask


def blur_patch(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """A blob blurred and darkened or brightened (stain, smeared or missing texture)."""
    img = img.convert("RGB")
    w, h = img.size

    def detail(m: np.ndarray) -> float:  # the luminance spread under a blob, read in its box only
        x0, y0, x1, y1 = _bbox(m, 0)
        lum = np.asarray(img.crop((x0, y0, x1, y1)), np.float32).mean(axis=2)
        return float(lum[m[y0:y1, x0:x1]].std())

    # of a few candidate blobs, the one over the most detail (blurring a plain background changes nothing)
    mask = max((_blob_mask(w, h, rng, (0.01, 0.05)) for _ in range(4)), key=detail)
    radius = max(2.0, 0.01 * max(w, h))
    gain = rng.uniform(0.6, 1.4)
    box = _bbox(mask, 8)  # the blob's soft edge (σ 1.5)
    x0, y0, x1, y1 = box
    m = _blur_margin(radius)
    cx0, cy0, cx1, cy1 = max(0, x0 - m), max(0, y0 - m), min(w, x1 + m), min(h, y1 + m)
    blurred = np.asarray(img.crop((cx0, cy0, cx1, cy1)).filter(ImageFilter.GaussianBlur(radius)), np.float32)
    blurred = np.clip(blurred[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0] * gain, 0, 255)
    soft = gaussian_filter(mask[y0:y1, x0:x1].astype(np.float32), 1.5)[..., None]
    arr = np.asarray(img.crop(box), np.float32)
    out = arr * (1 - soft) + blurred * soft
    return _pasted(img, out.astype(np.uint8), box), mask


DEFECT_MAKERS: dict[str, Callable[[Image.Image, np.random.Generator], tuple[Image.Image, np.ndarray]]] = {
    "cutpaste": cutpaste,
    "noise_patch": noise_patch,
    "scratch": scratch,
    "blur_patch": blur_patch,
}


def synthetic_defects(images: list[Image.Image], n: int, seed: int = 0) -> list[tuple[Image.Image, np.ndarray, str]]:
    """``n`` synthetic defects, cycling through the good ``images`` and the defect kinds.

    >>> out = synthetic_defects([Image.new("RGB", (64, 48), (120, 120, 120))], 4)
    >>> [kind for _, _, kind in out], all(m.any() and m.shape == (48, 64) for _, m, _ in out)
    (['cutpaste', 'noise_patch', 'scratch', 'blur_patch'], True)
    """
    rng = np.random.default_rng(seed)
    kinds = list(DEFECT_MAKERS)
    out = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        img, mask = DEFECT_MAKERS[kind](images[i % len(images)], rng)
        out.append((img, mask, kind))
    return out

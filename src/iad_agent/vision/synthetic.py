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


def noise_patch(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """DRAEM-style: a smooth-noise blob filled with a foreign texture (a scrambled, re-coloured view)."""
    img = img.convert("RGB")
    w, h = img.size
    mask = _blob_mask(w, h, rng)
    arr = np.asarray(img, np.float32)
    source = np.asarray(img.transpose(Image.Transpose.ROTATE_180).filter(ImageFilter.GaussianBlur(rng.uniform(0, 2))), np.float32)
    source = source[::-1] if rng.random() < 0.5 else source
    source = np.clip(source * rng.uniform(0.5, 1.5) + rng.uniform(-60, 60, 3), 0, 255)
    beta = rng.uniform(0.0, 0.6)  # DRAEM's opacity: 0 = the foreign texture only
    m = mask[..., None]
    out = np.where(m, beta * arr + (1 - beta) * source, arr)
    return Image.fromarray(out.astype(np.uint8)), mask


def scratch(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """A thin curved line, darker or brighter than the surface (scratch, crack)."""
    img = img.convert("RGB")
    w, h = img.size
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
    mask = np.asarray(layer) > 0
    arr = np.asarray(img, np.float32)
    mean = float(arr.mean())
    value = rng.uniform(0, 0.25) * 255 if mean > 100 or rng.random() < 0.5 else rng.uniform(0.75, 1.0) * 255
    alpha = gaussian_filter(mask.astype(np.float32), 0.7)[..., None] * rng.uniform(0.6, 1.0)
    out = arr * (1 - alpha) + value * alpha
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8)), mask


def blur_patch(img: Image.Image, rng: np.random.Generator) -> tuple[Image.Image, np.ndarray]:
    """A blob blurred and darkened or brightened (stain, smeared or missing texture)."""
    img = img.convert("RGB")
    w, h = img.size
    arr = np.asarray(img, np.float32)
    lum = arr.mean(axis=2)
    # of a few candidate blobs, the one over the most detail (blurring a plain background changes nothing)
    mask = max((_blob_mask(w, h, rng, (0.01, 0.05)) for _ in range(4)), key=lambda m: float(lum[m].std()))
    blurred = np.asarray(img.filter(ImageFilter.GaussianBlur(max(2.0, 0.01 * max(w, h)))), np.float32)
    blurred = np.clip(blurred * rng.uniform(0.6, 1.4), 0, 255)
    soft = gaussian_filter(mask.astype(np.float32), 1.5)[..., None]
    out = arr * (1 - soft) + blurred * soft
    return Image.fromarray(out.astype(np.uint8)), mask


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

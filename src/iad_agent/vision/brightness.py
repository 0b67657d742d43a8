"""Brightness matching: every image of a product seen at the good images' own brightness and contrast.

Some products are shot under light that changes from part to part: Magnetic Tile crops range
from a luminance mean of 55 to 179 between *good* tiles, ELPV cells from 127 to 190, LOCO juice
bottles from 30 to 50. With a few good images, a good part shot darker or lighter than all of
them then sits far from the normal bank everywhere, and its score rises with no defect at all.

For such products, registration stores the good images' median luminance mean and standard
deviation (``FeatureConfig.brightness``), and the feature extractor moves every image — good
images, queries, synthetic defects — to that mean and standard deviation before the backbone sees
it (one gain and one offset per image, the same for the three channels; values clipped to 0–255);
a tool's crop moves by the gain and offset of the image it was cut from. A defect changes only its
own pixels, so it stays; a change of light is gone.

Products whose good images keep their brightness (bottle, transistor, hazelnut) are left as they
are: matching would not change their scores, and it would hide a part that is darker or lighter
as a whole. The choice is made from the good images alone (:func:`brightness_target`).

A zero-shot batch (:mod:`iad_agent.zeroshot`) has no good images: the same rule is applied to the
whole batch, its images unlabelled (:func:`target_from_stats` of each image's statistics, so the
batch need not be held in memory).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageStat

#: The good images' brightness "varies" when the coefficient of variation of their luminance means
#: exceeds this. On the shared data's good pools (`experiments/brightness.py`): bottle 0.012,
#: transistor 0.028, hazelnut 0.049 (stable); grid 0.090, juice bottle 0.21, magnetic tile 0.30,
#: and ELPV (never used to choose) 0.17 (varying). 0.07 lies between the two groups.
VARIATION = 0.07
#: Luminance weights of ITU-R BT.601 (what PIL's ``convert("L")`` uses).
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
#: ``Image.info`` key of the luminance ``(mean, std)`` a crop is matched with: its whole image's
#: (:func:`crop_of`), so a crop is moved by the same gain and offset as the image it comes from.
STATS_KEY = "iad_luminance"


def luminance_stats(image: Image.Image) -> tuple[float, float]:
    """``(mean, standard deviation)`` of the image's luminance (0–255)."""
    stat = ImageStat.Stat(image.convert("L"))
    return float(stat.mean[0]), float(stat.stddev[0])


def brightness_target(images: Sequence[Image.Image], variation: float = VARIATION) -> tuple[float, float] | None:
    """The luminance ``(mean, std)`` to match a product's images to, or None to leave them as they are.

    None with fewer than two good images (how much the light varies cannot be seen from one) or
    when the good images' luminance means vary by at most ``variation`` (coefficient of variation).

    >>> grey = [Image.new("L", (8, 8), v) for v in (100, 104, 96)]
    >>> brightness_target(grey) is None
    True
    >>> brightness_target([Image.new("L", (8, 8), v) for v in (60, 100, 150)])
    (100.0, 0.0)
    """
    return target_from_stats([luminance_stats(im) for im in images], variation)


def target_from_stats(stats: Sequence[tuple[float, float]], variation: float = VARIATION) -> tuple[float, float] | None:
    """:func:`brightness_target` from the images' :func:`luminance_stats` (so a caller need not keep the images).

    >>> target_from_stats([(60.0, 10.0), (100.0, 20.0), (150.0, 40.0)])
    (100.0, 20.0)
    """
    if len(stats) < 2:
        return None
    arr = np.asarray(stats, dtype=np.float64).reshape(-1, 2)
    means = arr[:, 0]
    if means.std() <= variation * max(float(means.mean()), 1e-6):
        return None
    return round(float(np.median(means)), 2), round(float(np.median(arr[:, 1])), 2)


def crop_of(image: Image.Image, crop: Image.Image) -> Image.Image:
    """``crop`` (a region of ``image``) marked to be matched as ``image`` is, not by its own statistics.

    A crop's own mean and standard deviation would stretch a dark defect filling half of it to
    the product's contrast; the whole image's keep the crop as the global look sees it. Only the
    crop is marked (about 1.5 ms for a 900×900 image): a mark on ``image`` itself would pass to
    every image PIL derives from it (copies, rotated views, synthetic defects), which must be
    matched by their own statistics.
    """
    crop.info[STATS_KEY] = image.info.get(STATS_KEY) or luminance_stats(image)
    return crop


def match_brightness(pixels: np.ndarray, target: tuple[float, float],
                     stats: tuple[float, float] | None = None) -> np.ndarray:
    """An ``(H, W, 3)`` float32 image (0–255) moved to the luminance ``target`` ``(mean, std)``, in place.

    One gain (target std over the image's, its std floored at 1 grey level) and one offset for the
    three channels; clipped to 0–255. ``stats``: the ``(mean, std)`` to move from (a crop's whole
    image, :func:`crop_of`); default the pixels' own.

    >>> px = np.stack([np.tile(np.array([10.0, 30.0], np.float32), (2, 1))] * 3, axis=-1)
    >>> match_brightness(px, (100.0, 20.0))[0, :, 0].tolist()
    [80.0, 120.0]
    """
    if stats is None:
        lum = pixels @ _LUMA
        stats = float(lum.mean()), float(lum.std())
    mean, std = stats
    pixels -= mean
    pixels *= target[1] / max(std, 1.0)
    pixels += target[0]
    np.clip(pixels, 0.0, 255.0, out=pixels)
    return pixels

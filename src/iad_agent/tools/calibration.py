"""Calibrate each tool's evidence on held-out good images (no defect ever seen).

For a few good images, each treated as a query against the *other* good images (or, with a
single good image, slightly shifted/rotated views of it against itself), the tools are run on
the region the embedded policy would look at (the hottest spot of the leave-one-out heat map)
and on a random region.

The zoom and comparison limits are set *relative to the global threshold*: the median ratio of
the tool's reading to the global score on those held-out good parts, times the global
threshold. A good part whose global score sits at the threshold thus reads about 1.0 on every
tool. This keeps the tools as conservative as the global look when the held-out parts are
optimistic stand-ins (augmented views of a single good image score lower than other good parts
would, for the global look and the tools alike). The high-frequency ratio is unit-free and gets
its own quantile.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from iad_agent.episode import hot_spot_box
from iad_agent.tools.base import ToolLimits
from iad_agent.tools.highfreq import highfreq_ratio
from iad_agent.tools.retriever import region_of
from iad_agent.tools.zoom import CONTEXT, MIN_SIZE, zoom_evidence_many
from iad_agent.types import Box
from iad_agent.vision.normal_bank import aligned_distance, image_score, threshold_for_fpr

if TYPE_CHECKING:
    from iad_agent.product import Product

log = logging.getLogger(__name__)


def calibrate_tools(product: Product, max_queries: int = 6, n_references: int = 2, seed: int = 0,
                    views: tuple[list, np.ndarray] | None = None) -> dict[str, list[float]]:
    """Set the zoom / compare / high-frequency normal limits (``product.tool_limits``).

    Args:
        views: for a single good image, its augmented views and their feature grids (made
            here when not given).

    Returns:
        The held-out readings behind them (``zoom`` and ``compare``: tool reading / global
        score; ``highfreq``: the energy ratio), stored with the product so that a new
        false-alarm rate re-sets the limits without reading an image again.
    """
    from iad_agent.vision.learn import augmented_views

    bank = product.bank
    rng = np.random.default_rng(seed)
    cal = bank.calibration
    zoom, compare, highfreq = [], [], []  # per region: tool reading / the query's global score
    n = len(bank)
    if n >= 2:
        queries = [(int(i), product.reference_image(int(i)), bank.grids[int(i)].astype(np.float32))
                   for i in np.unique(np.linspace(0, n - 1, min(n, max_queries)).round().astype(int))]
    else:
        if views is None:
            images = augmented_views(product.reference_image(0), n=max_queries, seed=seed + 1)
            views = (images, product.extractor(images))
        queries = [(None, v, g) for v, g in list(zip(*views))[:max_queries]]
    jobs, scale = [], []  # the zooms, run together below (one extractor call keeps every thread busy)
    for exclude, image, grid in queries:
        dmap = bank.patch_distances(grid, exclude=exclude)
        global_score = max(image_score(dmap), 1e-8)
        size = rng.uniform(0.2, 0.4)
        x, y = rng.uniform(0, 1 - size, 2)
        boxes = [hot_spot_box(dmap, cal.knn_patch_threshold or cal.patch_threshold), Box(x, y, x + size, y + size)]
        refs = [i for i, _ in bank.nearest(grid, n_references, exclude=exclude)] or [0]
        aligned = aligned_distance(grid, bank.grids[refs[0]].astype(np.float32))
        reference = product.reference_image(refs[0])
        for box in boxes:
            b = box.clamped(MIN_SIZE).expanded(CONTEXT)
            jobs.append((image, b, refs))
            scale.append(global_score)
            compare.append(image_score(region_of(aligned, b.clamped(0.05))) / global_score)
            highfreq.append(highfreq_ratio(image, reference, b)[2])
    zoom = [r["score"] / s for r, s in zip(zoom_evidence_many(product, jobs), scale)]
    # tool readings are nearest-neighbour distances: their limits are relative to the knn threshold
    product.tool_limits = ToolLimits(zoom_threshold=float(np.median(zoom)) * cal.knn_threshold,
                                     compare_threshold=float(np.median(compare)) * cal.knn_threshold,
                                     highfreq_threshold=threshold_for_fpr(highfreq, cal.fpr))
    limits = product.tool_limits
    log.info("tool limits for %s: zoom %.3f, compare %.3f, highfreq %.3f", product.name,
             limits.zoom_threshold, limits.compare_threshold, limits.highfreq_threshold)
    return {"zoom": [float(v) for v in zoom], "compare": [float(v) for v in compare], "highfreq": [float(v) for v in highfreq]}

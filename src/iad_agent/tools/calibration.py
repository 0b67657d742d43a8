"""Calibrate each tool's evidence on held-out good images (no defect ever seen).

The held-out good images are those the registration's :func:`iad_agent.vision.learn.learn`
already scored — each good image against the *other* good images (leave-one-out), or, with a
single good image, slightly shifted/rotated views of it against itself — with their feature
grids and leave-one-out heat maps, so nothing is extracted or searched again. On each, the tools
are run on the region the embedded policy would look at: the hot spot of the heat map the
policy reads.

The zoom and comparison limits are set *relative to the global threshold*: the median ratio of
the tool's reading to the global score on those held-out good parts, times the global
threshold. A good part whose global score sits at the threshold thus reads about 1.0 on every
tool. This keeps the tools as conservative as the global look when the held-out parts are
optimistic stand-ins (augmented views of a single good image score lower than other good parts
would, for the global look and the tools alike). The high-frequency ratio is unit-free and gets
its own quantile.

The zoom readings are kept in the material (``zoom_readings``): fitting the tool weights
(:func:`iad_agent.vision.tool_weights.read_items`) reads the same held-out images at the same
region, and re-uses them instead of zooming again (a zoom is two feature extractions: the crop and its reference).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np

from iad_agent.episode import look_box
from iad_agent.tools.base import ToolLimits
from iad_agent.tools.highfreq import highfreq_ratio
from iad_agent.tools.retriever import region_of
from iad_agent.tools.zoom import CONTEXT, MIN_SIZE, REFERENCES, zoom_evidence_many
from iad_agent.vision.normal_bank import aligned_distance, image_score, threshold_for_fpr

if TYPE_CHECKING:
    from iad_agent.product import Product

log = logging.getLogger(__name__)


def calibrate_tools(product: Product, material: dict, n_references: int = REFERENCES) -> dict[str, list[float]]:
    """Set the zoom / compare / high-frequency normal limits (``product.tool_limits``).

    Args:
        material: what :func:`iad_agent.vision.learn.learn` kept (``images`` as callables,
            ``grids``, ``exclude``, ``knn`` and ``self`` maps, ``defect`` flags); its held-out
            good images are read here, and their zoom readings are added to it as
            ``zoom_readings`` (item index → ``(region, references, zoom score)``).

    Returns:
        The held-out readings behind them (``zoom`` and ``compare``: tool reading / global
        score; ``highfreq``: the energy ratio), stored with the product so that a new
        false-alarm rate re-sets the limits without reading an image again.
    """
    bank = product.bank
    cal = bank.calibration
    compare, highfreq = [], []  # per held-out image: tool reading / its global score
    held = [k for k, defect in enumerate(material["defect"]) if not defect]
    jobs, scale = [], []  # the zooms, run together below (one extractor call keeps every thread busy)
    for k in held:
        grid = np.asarray(material["grids"][k], np.float32)
        knn, exclude, image = material["knn"][k], material["exclude"][k], material["images"][k]()
        global_score = max(image_score(knn), 1e-8)
        fused = bank.scoring.fuse(knn, material["self"][k]) if bank.scoring.uses_self else None
        b = look_box(cal, knn, fused).clamped(MIN_SIZE).expanded(CONTEXT)
        refs = [i for i, _ in bank.nearest(grid, n_references, exclude=exclude)] or [0]
        aligned = aligned_distance(grid, bank.grids[refs[0]].astype(np.float32))
        jobs.append((image, b, refs))
        scale.append(global_score)
        compare.append(image_score(region_of(aligned, b.clamped(0.05))) / global_score)
        highfreq.append(highfreq_ratio(image, product.reference_image(refs[0]), b)[2])
    scores = [r["score"] for r in zoom_evidence_many(product, jobs)]  # the crops and maps are not kept
    material["zoom_readings"] = {k: (region, refs, score) for k, (_, region, refs), score in zip(held, jobs, scores)}
    del jobs
    zoom = [score / s for score, s in zip(scores, scale)]
    # tool readings are nearest-neighbour distances: their limits are relative to the knn threshold
    product.tool_limits = ToolLimits(zoom_threshold=float(np.median(zoom)) * cal.knn_threshold,
                                     compare_threshold=float(np.median(compare)) * cal.knn_threshold,
                                     highfreq_threshold=threshold_for_fpr(highfreq, cal.fpr))
    limits = product.tool_limits
    log.info("tool limits for %s: zoom %.3f, compare %.3f, highfreq %.3f", product.name,
             limits.zoom_threshold, limits.compare_threshold, limits.highfreq_threshold)
    return {"zoom": [float(v) for v in zoom], "compare": [float(v) for v in compare], "highfreq": [float(v) for v in highfreq]}

"""How much each tool's evidence counts in the verdict, learned at registration from good images alone.

Issue 11, item 3(a): the embedded policy fuses the global look's ratio with the zoom and
comparison evidence by a weighted geometric mean (:func:`iad_agent.policies.embedded.fuse`).
Which weights are right depends on the product and on the number of good references (the
benchmark: zoom hurt at 1 shot, helped at 4). Here they are chosen per product from the
material :func:`iad_agent.vision.learn.learn` already made — held-out good images (leave-one-out,
or augmented views of a single good image) and synthetic defects made from them — with their
feature grids and patch maps, so no global feature is extracted again.

Each held-out good image and synthetic defect goes through what the policy would do: its global
ratio (score / threshold under the product's scoring); only where the gate would open (the
ratio in the uncertainty band) the tools read the hot region, exactly as
:class:`~iad_agent.tools.PerceptiveZoomer` and :class:`~iad_agent.tools.ComparativeRetriever`
do, leaving the image's own bank entry out. So the added cost is one zoom (and one aligned
comparison) per *uncertain* item, not per item. For every pair of candidate weights the fused
verdict is recomputed from those readings (cheap), and the pair that best separates synthetic
defects from good images (AUROC) wins; a pair must beat the cheaper one by ``MARGIN`` to be
chosen (a tool of weight 0 is not called at inspection).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from iad_agent.product import Product

log = logging.getLogger(__name__)

#: Candidate zoom weights, cheapest first (0 = the zoom is never called).
ZOOM_WEIGHTS = (0.0, 0.5, 1.0, 2.0)
#: Candidate comparison weights, cheapest first.
COMPARE_WEIGHTS = (0.0, 0.25, 0.5, 1.0)
#: A costlier pair must separate synthetic defects better by this much (AUROC) to be chosen, and by
#: more than one ordered pair of a good image and a synthetic defect: with 8 held-out good images
#: (one good image's views, or 8+ good images) and 8 defects one pair is 1/64 AUROC and 0.02 asks for
#: two, but with 4 good images one pair is 1/32, and a single reordered pair switched the zoom on
#: (transistor at 4 shots). The pair floor made the agent at 4 shots what it is without the zoom
#: there: balanced accuracy 0.775 → 0.786, box hit rate 0.468 → 0.493 (``docs/benchmarks.md``); ELPV
#: cells 0.678 → 0.700; 1 and all shots unchanged. ``experiments/README.md``, *The tool weights'
#: margin*.
MARGIN = 0.02
#: Synthetic defects of learn()'s material used here (its first ones: each defect maker twice),
#: which bounds the zoom re-scorings a registration adds (at most this + learn's held-out images).
N_SYNTHETIC = 8


@dataclass
class Item:
    """One held-out good image (``defect=False``) or synthetic defect, as the policy would see it.

    ``zoom`` / ``compare`` are the tools' evidence ratios, ``None`` where the gate would not call
    them (or they could not be read).
    """

    defect: bool
    ratio: float
    zoom: float | None = None
    compare: float | None = None


def final_ratio(item: Item, w_zoom: float, w_compare: float, band_low: float, band_high: float) -> float:
    """The verdict's ratio for ``item`` under the given weights, as ``EmbeddedPolicy._answer`` computes it.

    >>> final_ratio(Item(True, 1.0, zoom=2.0), 1.0, 0.5, 0.75, 1.5) > 1.0
    True
    >>> final_ratio(Item(True, 1.0, zoom=2.0), 0.0, 0.5, 0.75, 1.5)
    1.0
    """
    from iad_agent.policies.embedded import fuse, squash

    evidence = [(v, w) for v, w in ((item.zoom, w_zoom), (item.compare, w_compare)) if v is not None and w > 0]
    if not evidence:
        return item.ratio
    fused = fuse(item.ratio, evidence)
    return squash(fused, band_low if item.ratio >= band_low else 0.0, band_high if item.ratio <= band_high else math.inf)


def choose_weights(items: list[Item], band_low: float, band_high: float,
                   zoom_weights: tuple[float, ...] = ZOOM_WEIGHTS,
                   compare_weights: tuple[float, ...] = COMPARE_WEIGHTS) -> tuple[float, float, dict[str, float]]:
    """The ``(w_zoom, w_compare)`` that best separate synthetic defects from good images.

    Candidates are walked from the cheapest (zoom before comparison: the zoom re-extracts
    features); a costlier pair replaces the best so far only when its AUROC is higher by
    ``MARGIN`` and by more than one ordered (good, defect) pair. Returns the pair and every candidate's
    AUROC (``"zoom,compare"``).

    >>> items = [Item(False, 0.9, 0.8, 1.0), Item(False, 1.1, 0.9, 1.0), Item(True, 1.0, 3.0, 1.0), Item(True, 0.95, 2.0, 1.0)]
    >>> choose_weights(items, 0.75, 1.5, (0.0, 1.0), (0.0,))[:2]
    (1.0, 0.0)
    """
    from iad_agent.vision.scoring import _auroc

    neg = [i for i in items if not i.defect]
    pos = [i for i in items if i.defect]
    margin = max(MARGIN, (1 + 1e-9) / max(len(neg) * len(pos), 1))  # never one ordered pair (see MARGIN)
    aurocs: dict[str, float] = {}
    best, best_pair = -1.0, (0.0, 0.0)
    for wz in zoom_weights:
        for wc in compare_weights:
            a = _auroc([final_ratio(i, wz, wc, band_low, band_high) for i in neg],
                       [final_ratio(i, wz, wc, band_low, band_high) for i in pos])
            aurocs[f"{wz:g},{wc:g}"] = round(a, 4)
            if a > best + (margin if best >= 0 else 0.0):
                best, best_pair = a, (wz, wc)
    return best_pair[0], best_pair[1], aurocs


def read_items(product: Product, material: dict, n_references: int | None = None, max_synthetic: int = N_SYNTHETIC) -> list[Item]:
    """Global ratio and (where the gate opens) tool evidence of learn()'s held-out and synthetic images.

    Args:
        material: what :func:`iad_agent.vision.learn.learn` kept: ``images`` (callables), ``grids``,
            ``exclude`` (the bank entry to leave out), ``knn`` and ``self`` patch maps and
            ``defect`` flags, one entry per item.
    """
    from iad_agent.episode import look_box
    from iad_agent.tools.base import evidence_ratio
    from iad_agent.tools.retriever import region_of
    from iad_agent.tools.zoom import CONTEXT, MIN_SIZE, REFERENCES, zoom_evidence_many
    from iad_agent.vision.normal_bank import aligned_distance, image_score

    n_references = REFERENCES if n_references is None else n_references

    bank, gate, limits = product.bank, product.gate, product.tool_limits
    cal, scoring = bank.calibration, bank.scoring
    done = material.get("zoom_readings", {})  # the tool calibration's zooms of the held-out images
    items = []
    zooms: list[tuple[Item, tuple]] = []  # run together below: one extractor call keeps every thread busy
    n_syn = 0
    for k, grid in enumerate(material["grids"]):
        if material["defect"][k]:
            n_syn += 1
            if n_syn > max_synthetic:
                continue
        exclude = material["exclude"][k]
        knn = material["knn"][k]
        fused = scoring.fuse(knn, material["self"][k]) if scoring.uses_self else None
        score, threshold = (image_score(fused), cal.threshold) if fused is not None else (image_score(knn), cal.knn_threshold)
        box = look_box(cal, knn, fused)
        item = Item(bool(material["defect"][k]), score / threshold if threshold > 0 else math.inf)
        looks = gate.band_low <= item.ratio <= gate.band_high or (gate.texture and gate.zoom_textures and item.ratio < gate.band_high)
        if looks and not gate.mixed_geometry:
            grid32 = np.asarray(grid, np.float32)
            refs = [i for i, _ in bank.nearest(grid32, n_references, exclude=exclude)]
            if refs:
                region = box.clamped(MIN_SIZE).expanded(CONTEXT)
                if k in done and done[k][:2] == (region, refs):  # the same zoom: read already
                    item.zoom = evidence_ratio(done[k][2], limits.zoom_threshold)
                else:
                    zooms.append((item, (material["images"][k](), region, refs)))
                if gate.aligned_informative:
                    aligned = aligned_distance(grid32, bank.grids[refs[0]].astype(np.float32))
                    item.compare = evidence_ratio(image_score(region_of(aligned, box.clamped(0.05))), limits.compare_threshold)
        items.append(item)
    for (item, _), reading in zip(zooms, zoom_evidence_many(product, [job for _, job in zooms])):
        item.zoom = evidence_ratio(reading["score"], limits.zoom_threshold)
    return items


def fit_tool_weights(product: Product, material: dict | None) -> None:
    """Set ``product.gate.w_zoom`` / ``w_compare`` from good images and synthetic defects (in place).

    Without material (nothing was learned), or without both good images and synthetic defects
    among it, or when no item is uncertain enough for the gate to call a tool, the weights are
    left as they are.
    """
    if not material or not material.get("grids"):
        return
    items = read_items(product, material)
    if not any(i.defect for i in items) or all(i.defect for i in items):
        return
    if all(i.zoom is None and i.compare is None for i in items):
        log.info("tool weights of %s: no held-out or synthetic image is uncertain; weights kept", product.name)
        return
    gate = product.gate
    gate.w_zoom, gate.w_compare, aurocs = choose_weights(items, gate.band_low, gate.band_high)
    gate.weights_from = "synthetic-defects"
    log.info("tool weights of %s: zoom %g, compare %g (synthetic-defect AUROC by zoom,compare: %s)",
             product.name, gate.w_zoom, gate.w_compare, aurocs)

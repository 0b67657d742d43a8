"""An inspection episode: the query, the product it is checked against, and the evidence so far.

A :class:`PreparedQuery` is the query image with what the product's normal bank says about
it (patch features, the global look, the heat map), each computed once. The :class:`Episode`
that tools and policies receive starts from one; several episodes can share it (the
benchmark runs every policy on the same prepared query), so no tool and no policy
re-extracts what is already known.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from iad_agent.types import Box, Trajectory

if TYPE_CHECKING:
    from iad_agent.product import Product
    from iad_agent.vision.normal_bank import Calibration


@dataclass
class GlobalLook:
    """The normal-bank evidence for the whole image (computed once per query).

    ``patch_map``, ``score`` and ``threshold`` are under the product's scoring (nearest good
    patch, mixed with self-similarity where the registration chose so); ``knn`` is the same
    look under plain nearest-neighbour distance (the ``knn`` baseline, the ablations).
    """

    patch_map: np.ndarray  # (h, w) patch scores
    score: float
    threshold: float
    hot_box: Box  # the hottest region, where the tools look (registration calibrates them on it)
    hot_area: float  # fraction of patches above the per-patch normal threshold
    knn: GlobalLook | None = None
    defect_box: Box | None = None  # the box an anomalous answer reports (:func:`look_box` with ``BOX_SIGMA``, ``BOX_GROW``)

    @property
    def answer_box(self) -> Box:
        """The box an anomalous verdict reports: where the blurred map peaks (``hot_box`` if not set)."""
        return self.defect_box or self.hot_box

    @property
    def ratio(self) -> float:
        return self.score / self.threshold if self.threshold > 0 else float("inf")

    @property
    def plain(self) -> GlobalLook:
        """The plain nearest-neighbour look (this look when the scoring is plain already)."""
        return self.knn or self


class PreparedQuery:
    """A query image of one product with its features, global look and heat map, each computed once.

    Attributes:
        product: the product the query is checked against.
        image: the query, RGB.
        path: the file it was loaded from (``None`` for an in-memory image).
        warnings: problems that do not stop the inspection (e.g. a size unlike the good images').
        ms / cpu_ms: wall-clock and CPU time :meth:`compute` (and the loading before it) took.
    """

    def __init__(self, product: Product, image: Image.Image, path: Path | None = None,
                 warnings: list[str] | None = None) -> None:
        self.product = product
        self.image = image
        self.path = path
        self.warnings = list(warnings or [])
        self.ms = 0.0
        self.cpu_ms = 0.0

    @cached_property
    def grid(self) -> np.ndarray:
        """The query's patch features at the product's base resolution."""
        return self._grids[0]

    @cached_property
    def self_grid(self) -> np.ndarray:
        """The grid the self-similarity term reads: unsmoothed where the product's scoring says so."""
        return self._grids[1]

    @cached_property
    def _grids(self) -> tuple[np.ndarray, np.ndarray]:
        scoring = self.product.bank.scoring
        if scoring.uses_self and scoring.self_raw:
            smoothed, raw = self.product.extractor.with_raw([self.image])
            return smoothed[0], raw[0]
        grid = self.product.extractor([self.image])[0]
        return grid, grid

    @cached_property
    def look(self) -> GlobalLook:
        """The global look: heat map, score, threshold and the hottest region."""
        from iad_agent.vision.normal_bank import image_score

        bank = self.product.bank
        cal = bank.calibration
        knn_map = bank.patch_distances(self.grid)
        knn_level = cal.knn_patch_threshold or cal.patch_threshold
        knn = GlobalLook(knn_map, image_score(knn_map), cal.knn_threshold, look_box(cal, knn_map),
                         float((knn_map > knn_level).mean()), defect_box=look_box(cal, knn_map, sigma=BOX_SIGMA, grow=BOX_GROW))
        scoring = bank.scoring
        if not scoring.uses_self:
            return knn
        from iad_agent.vision.similarity import self_similarity_map

        fused = scoring.fuse(knn_map, self_similarity_map(self.self_grid))
        return GlobalLook(fused, image_score(fused), cal.threshold, look_box(cal, knn_map, fused),
                          float((fused > cal.patch_threshold).mean()), knn=knn,
                          defect_box=look_box(cal, knn_map, fused, sigma=BOX_SIGMA, grow=BOX_GROW))

    @cached_property
    def heatmap(self) -> np.ndarray:
        """Pixel heat map (image size) in the look's patch-score units."""
        from iad_agent.vision.normal_bank import upsample_map

        return upsample_map(self.look.patch_map, self.image.width, self.image.height)

    @cached_property
    def plain_heatmap(self) -> np.ndarray:
        """Pixel heat map of the plain nearest-neighbour look (the ``knn`` baseline, ablations)."""
        from iad_agent.vision.normal_bank import upsample_map

        if self.look.knn is None:
            return self.heatmap
        heat = upsample_map(self.look.plain.patch_map, self.image.width, self.image.height)
        heat.flags.writeable = False
        return heat

    def compute(self) -> PreparedQuery:
        """Compute the features, the global look and the heat map now (timed, added to ``ms`` / ``cpu_ms``).

        The arrays become read-only: they are shared by every episode that starts from this
        query, so a tool that wrote into one would fail loudly instead of corrupting the others.
        """
        start, cpu = time.perf_counter(), time.process_time()
        for array in (self.grid, self.look.patch_map, self.heatmap):
            array.flags.writeable = False
        self.ms += (time.perf_counter() - start) * 1000
        self.cpu_ms += (time.process_time() - cpu) * 1000
        return self


@dataclass
class Episode:
    """State shared by the agent loop, the policy and the tools for one inspection.

    ``prepared`` is the query's shared evidence; when not given it is made from ``query``
    (computed on first use).
    """

    product: Product
    query: Image.Image
    trajectory: Trajectory
    notes: list[str] = field(default_factory=list)
    memo: dict[str, Any] = field(default_factory=dict)
    prepared: PreparedQuery | None = None

    def __post_init__(self) -> None:
        if self.prepared is None:
            self.prepared = PreparedQuery(self.product, self.query)
        elif self.prepared.product is not self.product or self.prepared.image is not self.query:
            raise ValueError("the prepared query belongs to another product or image than the episode")

    @property
    def grid(self) -> np.ndarray:
        """The query's patch features at the product's base resolution."""
        return self.prepared.grid

    @property
    def look(self) -> GlobalLook:
        """The global look: heat map, score, threshold and the hottest region."""
        return self.prepared.look

    def heatmap(self, plain: bool = False) -> np.ndarray:
        """Pixel heat map (image size) in the look's patch-score units (``plain``: nearest-neighbour map)."""
        return self.prepared.plain_heatmap if plain else self.prepared.heatmap

    @property
    def defect_types(self) -> list[str]:
        return self.product.defect_types


def look_box(cal: Calibration, knn_map: np.ndarray, fused: np.ndarray | None = None, sigma: float = 0.0,
             grow: float = 1.0) -> Box:
    """The hottest region of the global look: of the ``fused`` map at the fused patch level when the
    product's scoring fuses self-similarity, else of the nearest-neighbour map at its own level.

    ``sigma`` 0: around the map's maximum, where the embedded policy zooms (registration calibrates
    the tools on the same region); ``BOX_SIGMA`` and ``BOX_GROW``: around the blurred map's peak,
    grown through a lower cut, the box an anomalous answer reports (:func:`hot_spot_box`)."""
    if fused is not None:
        return hot_spot_box(fused, cal.patch_threshold, sigma=sigma, grow=grow)
    return hot_spot_box(knn_map, cal.knn_patch_threshold or cal.patch_threshold, sigma=sigma, grow=grow)


#: An answer's box is drawn around the place where the patch map, blurred by this many patches
#: (Gaussian σ), is highest: where the map is high over an area, not one stray hot patch. Its
#: extent is the region of the map itself above the level. Chosen on synthetic defects made from
#: the references (their masks are known), the same σ for every product: it raised their box hit
#: rate without lowering their IoU (``experiments/boxes.py``). The tools keep looking at the
#: map's own maximum (σ 0): zooming on the new box lowered the agent's image AUROC at 4 shots.
BOX_SIGMA = 2.0

#: The answer's region is grown from that peak through every patch above this fraction of the way
#: from the map's median to the per-patch level (hysteresis, as an edge detector links a strong
#: edge through weaker pixels): a defect whose map is above the level in one place and just below
#: it beside (a long scratch, a large stain) gets a box around all of it, not around its hottest
#: piece. Chosen like ``BOX_SIGMA``, on synthetic defects made from the references, the same for
#: every product: of 0.9 / 0.75 / 0.5 / 0.25, 0.75 raised their box hit rate most while their IoU
#: stayed within 0.01 (``experiments/boxes.py --rules hysteresis``).
BOX_GROW = 0.75


def hot_spot_box(dmap: np.ndarray, level: float, min_size: float = 0.12, sigma: float = 0.0,
                 grow: float = 1.0) -> Box:
    """Box around the connected region above ``level`` that holds the maximum of the blurred map.

    The peak is taken on the map blurred by ``sigma`` patches (0: the map's own maximum); the
    region is that of the map itself, cut at ``grow`` of the way from the map's median to
    ``level`` (1: at the level; never above it). If the map does not exceed ``level`` at the
    peak, the region is grown around the peak at half its value (above the map's median).
    """
    from iad_agent.vision.grid_ops import gaussian_filter, region_at  # scipy.ndimage's label: half a second to import

    dmap = np.asarray(dmap)
    g_h, g_w = dmap.shape
    seek = gaussian_filter(dmap.astype(np.float32), sigma=sigma) if sigma > 0 else dmap
    peak = np.unravel_index(int(np.argmax(seek)), dmap.shape)
    if sigma > 0 and not dmap[peak] > float(np.median(dmap)):  # a flat map: its own maximum
        peak = np.unravel_index(int(np.argmax(dmap)), dmap.shape)
    median = float(np.median(dmap))
    cut = min(level, median + grow * (level - median)) if dmap[peak] > level else 0.5 * (dmap[peak] + median)
    region = region_at(dmap > cut, peak)
    box = Box.from_mask(region) or Box(peak[1] / g_w, peak[0] / g_h, (peak[1] + 1) / g_w, (peak[0] + 1) / g_h)
    return box.clamped(min_size)

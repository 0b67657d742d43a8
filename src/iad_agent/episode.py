"""An inspection episode: the query, the product it is checked against, and the evidence so far.

The :class:`Episode` is what tools and policies receive. It caches the query's patch features
and the global look (the normal-bank heat map), so no tool re-extracts what is already known.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from iad_agent.types import Box, Trajectory
from iad_agent.vision.normal_bank import image_score, upsample_map
from iad_agent.vision.similarity import self_similarity_map

if TYPE_CHECKING:
    from iad_agent.product import Product


@dataclass
class GlobalLook:
    """The normal-bank evidence for the whole image (computed once per episode).

    ``patch_map``, ``score`` and ``threshold`` are under the product's scoring (nearest good
    patch, mixed with self-similarity where the registration chose so); ``knn`` is the same
    look under plain nearest-neighbour distance (the ``knn`` baseline, the ablations).
    """

    patch_map: np.ndarray  # (h, w) patch scores
    score: float
    threshold: float
    hot_box: Box
    hot_area: float  # fraction of patches above the per-patch normal threshold
    knn: GlobalLook | None = None

    @property
    def ratio(self) -> float:
        return self.score / self.threshold if self.threshold > 0 else float("inf")

    @property
    def plain(self) -> GlobalLook:
        """The plain nearest-neighbour look (this look when the scoring is plain already)."""
        return self.knn or self


@dataclass
class Episode:
    """State shared by the agent loop, the policy and the tools for one inspection."""

    product: Product
    query: Image.Image
    trajectory: Trajectory
    notes: list[str] = field(default_factory=list)
    memo: dict[str, Any] = field(default_factory=dict)

    @cached_property
    def grid(self) -> np.ndarray:
        """The query's patch features at the product's base resolution."""
        return self.product.extractor([self.query])[0]

    @cached_property
    def look(self) -> GlobalLook:
        """The global look: heat map, score, threshold and the hottest region."""
        bank = self.product.bank
        cal = bank.calibration
        knn_map = bank.patch_distances(self.grid)
        knn_level = cal.knn_patch_threshold or cal.patch_threshold
        knn = GlobalLook(knn_map, image_score(knn_map), cal.knn_threshold, hot_spot_box(knn_map, knn_level),
                         float((knn_map > knn_level).mean()))
        scoring = bank.scoring
        if not scoring.uses_self:
            return knn
        fused = scoring.fuse(knn_map, self_similarity_map(self.grid))
        return GlobalLook(fused, image_score(fused), cal.threshold, hot_spot_box(fused, cal.patch_threshold),
                          float((fused > cal.patch_threshold).mean()), knn=knn)

    def heatmap(self, plain: bool = False) -> np.ndarray:
        """Pixel heat map (image size) in the look's patch-score units (``plain``: nearest-neighbour map)."""
        look = self.look.plain if plain else self.look
        return upsample_map(look.patch_map, self.query.width, self.query.height)

    @property
    def defect_types(self) -> list[str]:
        return self.product.defect_types


def hot_spot_box(dmap: np.ndarray, level: float, min_size: float = 0.12) -> Box:
    """Box around the connected region above ``level`` that holds the map's maximum.

    If nothing exceeds ``level`` the region is grown around the maximum at half its value.
    """
    from scipy.ndimage import label

    g_h, g_w = dmap.shape
    peak = np.unravel_index(int(np.argmax(dmap)), dmap.shape)
    cut = level if dmap[peak] > level else 0.5 * (dmap[peak] + float(np.median(dmap)))
    labels, _ = label(dmap > cut)
    region = labels == labels[peak]
    box = Box.from_mask(region) or Box(peak[1] / g_w, peak[0] / g_h, (peak[1] + 1) / g_w, (peak[0] + 1) / g_h)
    return box.clamped(min_size)

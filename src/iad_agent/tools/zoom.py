"""``PerceptiveZoomer`` (AgentIAD's PZ; IndusAgent's dynamic region cropping).

Crops a normalized box (clamped to the image, grown to a minimum size), upsamples it, and
re-scores the crop at the higher resolution against the *same region* of the nearest good
references, so zooming adds evidence (a zoom ratio) and not only pixels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from iad_agent.tools.base import BOX_SCHEMA, Evidence, Tool, evidence_ratio
from iad_agent.types import Box, ToolResult

if TYPE_CHECKING:
    from iad_agent.episode import Episode
    from iad_agent.product import Product

MIN_SIZE = 0.08
CONTEXT = 0.1
OUTPUT_SIDE = 448
#: Good images whose same region the zoomed crop is compared with (the nearest ones). One: each
#: reference is a feature extraction as costly as the crop's own, and a registration makes a
#: dozen or more zooms to calibrate the zoom and learn its weight.
REFERENCES = 1


def crop(img: Image.Image, box: Box, side: int | None = None) -> Image.Image:
    """Crop a normalized box; optionally upsample its longer side to ``side`` pixels."""
    region = img.crop(box.to_pixels(img.width, img.height))
    if side:
        scale = side / max(region.size)
        region = region.resize((max(1, round(region.width * scale)), max(1, round(region.height * scale))), Image.Resampling.BICUBIC)
    return region


def zoom_evidence(product: Product, query: Image.Image, box: Box, refs: list[int]) -> dict[str, Any]:
    """Score the crop of ``query`` against the same crops of the good images ``refs``.

    The crop is resized to the extractor's resolution, so a small box is seen at a higher
    resolution than in the global look; each query patch is matched to its nearest patch in the
    reference crops (taken with 15 % slack for misalignment). The score (mean of the top 1 %
    distances) is in absolute feature units and is compared with the product's zoom limit,
    calibrated the same way on held-out good images.
    """
    return zoom_evidence_many(product, [(query, box, refs)])[0]


def zoom_evidence_many(product: Product, jobs: Sequence[tuple[Image.Image, Box, list[int]]]) -> list[dict[str, Any]]:
    """:func:`zoom_evidence` of several ``(query, box, refs)`` at once: one extractor call for all crops.

    The same readings as one call each; with the crops together the extractor keeps every
    allowed thread busy (a registration's tool calibration and weight fit make a few dozen
    zooms).
    """
    from iad_agent.vision.brightness import crop_of
    from iad_agent.vision.normal_bank import image_score

    matched = product.bank.config.brightness is not None  # then each crop moves as its whole image does
    cut = (lambda img, b: crop_of(img, crop(img, b))) if matched else crop
    crops: list[Image.Image] = []
    for query, box, refs in jobs:
        ref_box = box.expanded(0.15)
        crops.append(cut(query, box))
        crops.extend(cut(product.reference_image(i), ref_box) for i in refs)
    feats = product.extractor(crops) if crops else []  # grids of the crops' own shapes
    out, k = [], 0
    for _, _, refs in jobs:
        q, ref_feats = feats[k], feats[k + 1:k + 1 + len(refs)]
        c = q.shape[-1]
        q_map = nearest_distances(q.reshape(-1, c), np.concatenate([r.reshape(-1, c) for r in ref_feats])).reshape(q.shape[:2])
        out.append({"score": image_score(q_map), "map": q_map, "crop": crops[k]})
        k += 1 + len(refs)
    return out


def nearest_distances(queries: np.ndarray, references: np.ndarray) -> np.ndarray:
    """Euclidean distance of each query row to its nearest reference row (exact faiss search, no matrix kept)."""
    import faiss

    index = faiss.IndexFlatL2(references.shape[1])
    index.add(np.ascontiguousarray(references, dtype=np.float32))
    d, _ = index.search(np.ascontiguousarray(queries, dtype=np.float32), 1)
    return np.sqrt(np.maximum(d[:, 0], 0))


@dataclass(frozen=True, kw_only=True)
class ZoomReading(Evidence):
    """What the perceptive zoomer measured.

    Attributes:
        box: the region actually examined (clamped, grown to the minimum size, with context).
        score: the crop's anomaly score at the higher resolution (``None`` without re-scoring).
        limit: the product's calibrated normal level of that score.
        peak: the most unusual point, normalized ``[x, y]`` in the whole image.
        references: indices of the good images the crop was compared with.
    """

    box: list[float]
    score: float | None = None
    limit: float | None = None
    peak: list[float] | None = None
    references: list[int] | None = None


class PerceptiveZoomer(Tool):
    name = "perceptive_zoomer"
    description = (
        "Zoom into a region of the query image: crops the normalized box [x1, y1, x2, y2] "
        "(0..1, clamped, at least 8% of each side), returns it upsampled, and re-scores it at "
        "higher resolution against the same region of the nearest good part."
    )
    parameters = {
        "type": "object",
        "properties": {"box": BOX_SCHEMA},
        "required": ["box"],
        "additionalProperties": False,
    }

    def __init__(self, n_references: int = REFERENCES, rescore: bool = True) -> None:
        self.n_references = n_references
        self.rescore = rescore

    def run(self, episode: Episode, box: list[float]) -> ToolResult:
        b = Box.from_list(box)
        if b.x2 <= 0 or b.y2 <= 0 or b.x1 >= 1 or b.y1 >= 1:
            raise ValueError(f"box {box} lies outside the image (coordinates are normalized to 0..1)")
        b = b.clamped(MIN_SIZE).expanded(CONTEXT)
        view = crop(episode.query, b, OUTPUT_SIDE)
        if not self.rescore:
            return ToolResult(text=f"Zoomed into {b.to_list(3)}.", images=[view], reading=ZoomReading(box=b.to_list(), evidence=None),
                              image_captions=["zoomed crop"])
        refs = [i for i, _ in episode.product.bank.nearest(episode.grid, self.n_references)]
        ev = zoom_evidence(episode.product, episode.query, b, refs)
        limit = episode.product.tool_limits.zoom_threshold
        ratio = evidence_ratio(ev["score"], limit)
        hot = ev["map"]
        peak = np.unravel_index(int(np.argmax(hot)), hot.shape)
        py, px = (peak[0] + 0.5) / hot.shape[0], (peak[1] + 0.5) / hot.shape[1]
        peak_xy = (b.x1 + px * b.width, b.y1 + py * b.height)
        if ratio is None:
            verdict = f"has zoom score {ev['score']:.3f} (the product has no calibrated normal limit to compare it with)"
        else:
            verdict = (f"{'stands out from' if ratio > 1 else 'matches'} the same region of {len(refs)} good part(s): "
                       f"zoom score {ev['score']:.3f} against the normal limit {limit:.3f} (ratio {ratio:.2f})")
        text = (
            f"Zoomed into {b.to_list(3)} at {view.width}x{view.height}. At this resolution the region {verdict}. "
            f"Most unusual point at ({peak_xy[0]:.2f}, {peak_xy[1]:.2f})."
        )
        reading = ZoomReading(box=b.to_list(), score=ev["score"], limit=limit, evidence=ratio,
                              peak=[round(peak_xy[0], 4), round(peak_xy[1], 4)], references=refs)
        return ToolResult(text=text, images=[view], reading=reading, image_captions=["zoomed crop"])

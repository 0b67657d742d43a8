"""``ComparativeRetriever`` (AgentIAD's CR): fetch the nearest good part for comparison.

Returns the most similar registered good image (by global descriptor, faiss inner product),
and for a region the *aligned* same region of that reference, with a position-wise feature
distance: a part that is present but misplaced or missing shows here even when every patch
looks normal on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from iad_agent.tools.base import BOX_SCHEMA, Evidence, Tool, evidence_ratio
from iad_agent.tools.zoom import OUTPUT_SIDE, crop
from iad_agent.types import Box, ToolResult

if TYPE_CHECKING:
    from iad_agent.episode import Episode


def region_of(grid_map: np.ndarray, box: Box) -> np.ndarray:
    h, w = grid_map.shape[:2]
    l, t, r, b = box.to_pixels(w, h)
    return grid_map[t:b, l:r]


@dataclass(frozen=True, kw_only=True)
class ComparisonReading(Evidence):
    """What the comparative retriever found.

    Attributes:
        references: indices of the nearest good images, most similar first.
        similarity: their cosine similarity to the query (global descriptors).
        box: the region compared position by position (``None``: whole-image retrieval only,
            then ``evidence`` is ``None`` too).
        region_distance: the position-wise feature distance between the query's region and
            the aligned region of the nearest good image.
    """

    references: list[int]
    similarity: list[float]
    box: list[float] | None = None
    region_distance: float | None = None


class ComparativeRetriever(Tool):
    name = "comparative_retriever"
    description = (
        "Retrieve the most similar known-good image of this product. With a box [x1, y1, x2, y2] "
        "(0..1), also returns the same region of that good image, aligned with the query, and "
        "how far the query's region differs from it position by position."
    )
    parameters = {
        "type": "object",
        "properties": {
            "box": BOX_SCHEMA,
            "k": {"type": "integer", "minimum": 1, "maximum": 4, "description": "how many good images (default 1)"},
        },
        "additionalProperties": False,
    }

    def run(self, episode: Episode, box: list[float] | None = None, k: int = 1) -> ToolResult:
        from iad_agent.vision.normal_bank import aligned_distance, image_score

        bank = episode.product.bank
        hits = bank.nearest(episode.grid, k)
        images = [episode.product.reference_image(i) for i, _ in hits]
        sims = ", ".join(f"#{i} (cosine {s:.3f})" for i, s in hits)
        refs, similarity = [i for i, _ in hits], [s for _, s in hits]
        if box is None:
            text = f"Nearest good image(s) of {episode.product.name}: {sims}."
            return ToolResult(text=text, images=images, reading=ComparisonReading(references=refs, similarity=similarity, evidence=None),
                              image_captions=["good reference"] * len(images))
        b = Box.from_list(box).clamped(0.05)
        ref_index = hits[0][0]
        dmap = aligned_distance(episode.grid, bank.grids[ref_index].astype(np.float32))
        score = image_score(region_of(dmap, b))
        cal = bank.calibration
        limit = episode.product.tool_limits.compare_threshold
        evidence = evidence_ratio(score, limit)
        q_crop = crop(episode.query, b, OUTPUT_SIDE)
        r_crop = crop(images[0], b, OUTPUT_SIDE)
        differs = "agrees with" if evidence is not None and evidence <= 1 else "differs from" if evidence is not None else "compared with"
        text = (
            f"Nearest good image: {sims}. In region {b.to_list(3)} the query {differs} the aligned good "
            f"region: position-wise distance {score:.3f} (normal level {limit:.3f}, "
            f"whole-image normal level {cal.aligned_threshold:.3f})."
        )
        reading = ComparisonReading(references=refs, similarity=similarity, box=b.to_list(), region_distance=score, evidence=evidence)
        return ToolResult(text=text, images=[r_crop, q_crop], reading=reading, image_captions=["good reference, same region", "query region"])

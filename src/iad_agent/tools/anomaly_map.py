"""``AnomalyMap``: the normal-bank heat map and score, offered to VLM policies as evidence.

Beyond the two papers: a vision-language model can combine its own reading of the image with
nearest-neighbour evidence. It reuses the episode's cached global look (no re-extraction).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from iad_agent.tools.base import BOX_SCHEMA, Reading, Tool
from iad_agent.tools.retriever import region_of
from iad_agent.types import Box, ToolResult

if TYPE_CHECKING:
    from iad_agent.episode import Episode


@dataclass(frozen=True, kw_only=True)
class AnomalyMapReading(Reading):
    """The normal-bank evidence for a region.

    Attributes:
        score: anomaly score of the region (whole image: the global look's score).
        threshold: the product's threshold, set from good images.
        box: the region scored.
        hot_box: the hottest region of the whole image.
    """

    score: float
    threshold: float
    box: list[float]
    hot_box: list[float]


class AnomalyMap(Tool):
    name = "anomaly_map"
    description = (
        "Nearest-neighbour anomaly evidence from the registered good parts: a heat-map overlay, "
        "the anomaly score and the calibrated threshold, for the whole image or a box [x1, y1, x2, y2]."
    )
    parameters = {"type": "object", "properties": {"box": BOX_SCHEMA}, "additionalProperties": False}

    def run(self, episode: Episode, box: list[float] | None = None) -> ToolResult:
        from iad_agent.report import overlay
        from iad_agent.vision.normal_bank import image_score

        look = episode.look
        b = Box(0, 0, 1, 1) if box is None else Box.from_list(box).clamped(0.05)
        score = look.score if box is None else image_score(region_of(look.patch_map, b))
        image = overlay(episode.query, episode.heatmap(), vmax=look.threshold * 1.5)
        text = (
            f"Anomaly score {score:.3f} for region {b.to_list(3)} (threshold {look.threshold:.3f}; "
            f"above means unlike every good part). Hottest region of the image: {look.hot_box.to_list(3)}."
        )
        reading = AnomalyMapReading(score=score, threshold=look.threshold, box=b.to_list(), hot_box=look.hot_box.to_list())
        return ToolResult(text=text, images=[image], reading=reading, image_captions=["anomaly heat map"])

"""``AnomalyMap``: the normal-bank heat map and score, offered to VLM policies as evidence.

Beyond the two papers: a vision-language model can combine its own reading of the image with
nearest-neighbour evidence. It reuses the episode's cached global look (no re-extraction).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from iad_agent.tools.base import BOX_SCHEMA, Tool
from iad_agent.tools.retriever import region_of
from iad_agent.types import Box, ToolResult
from iad_agent.vision.normal_bank import image_score

if TYPE_CHECKING:
    from iad_agent.episode import Episode


class AnomalyMap(Tool):
    name = "anomaly_map"
    description = (
        "Nearest-neighbour anomaly evidence from the registered good parts: a heat-map overlay, "
        "the anomaly score and the calibrated threshold, for the whole image or a box [x1, y1, x2, y2]."
    )
    parameters = {"type": "object", "properties": {"box": BOX_SCHEMA}, "additionalProperties": False}

    def run(self, episode: Episode, box: list[float] | None = None) -> ToolResult:
        from iad_agent.report import overlay

        look = episode.look
        b = Box(0, 0, 1, 1) if box is None else Box.from_list(box).clamped(0.05)
        score = look.score if box is None else image_score(region_of(look.patch_map, b))
        image = overlay(episode.query, episode.heatmap(), vmax=look.threshold * 1.5)
        text = (
            f"Anomaly score {score:.3f} for region {b.to_list(3)} (threshold {look.threshold:.3f}; "
            f"above means unlike every good part). Hottest region of the image: {look.hot_box.to_list(3)}."
        )
        return ToolResult(text=text, images=[image], data={"score": score, "threshold": look.threshold, "box": b.to_list(),
                                                          "hot_box": look.hot_box.to_list()}, image_captions=["anomaly heat map"])

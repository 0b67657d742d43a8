"""``HighFrequencyEnhancer`` (IndusAgent): make fine scratches, cracks and texture breaks visible.

A difference of Gaussians (σ 1 − σ 3) of the luminance isolates fine detail; the tool returns
it as an image and compares its energy with the same region of the nearest good part.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from iad_agent.tools.base import BOX_SCHEMA, Evidence, Tool, evidence_ratio
from iad_agent.tools.zoom import OUTPUT_SIDE, crop
from iad_agent.types import Box, ToolResult

if TYPE_CHECKING:
    from iad_agent.episode import Episode


def high_frequency(img: Image.Image, fine: float = 1.0, coarse: float = 3.0) -> np.ndarray:
    """Difference-of-Gaussians detail of the luminance, float32 in grey levels."""
    from scipy.ndimage import gaussian_filter  # here: listing the tools must not import scipy

    lum = np.asarray(img.convert("L"), dtype=np.float32)
    return gaussian_filter(lum, fine) - gaussian_filter(lum, coarse)


def energy(detail: np.ndarray) -> float:
    return float(np.sqrt(np.mean(detail.astype(np.float64) ** 2)))


def visualize(detail: np.ndarray) -> Image.Image:
    mag = np.abs(detail)
    scale = max(float(np.percentile(mag, 99.5)), 1e-6)
    return Image.fromarray((np.clip(mag / scale, 0, 1) * 255).astype(np.uint8), mode="L").convert("RGB")


def highfreq_ratio(query: Image.Image, reference: Image.Image, box: Box, side: int = OUTPUT_SIDE) -> tuple[float, float, float, np.ndarray]:
    """``(query energy, reference energy, symmetric ratio ≥ 1, query detail)`` for a region."""
    q = high_frequency(crop(query, box, side))
    r = high_frequency(crop(reference, box, side))
    eq, er = energy(q), energy(r)
    ratio = max(eq, 1e-6) / max(er, 1e-6)
    return eq, er, max(ratio, 1 / ratio), q


@dataclass(frozen=True, kw_only=True)
class HighFrequencyReading(Evidence):
    """What the high-frequency enhancer measured.

    Attributes:
        box: the region examined.
        energy: fine-detail (difference-of-Gaussians) energy of the query's region, grey levels.
        reference_energy: the same in the aligned region of the nearest good image.
        ratio: the symmetric ratio of the two energies (>= 1: more *or* less detail than normal).
        reference: index of that good image.
    """

    box: list[float]
    energy: float
    reference_energy: float
    ratio: float
    reference: int


class HighFrequencyEnhancer(Tool):
    name = "high_frequency_enhancer"
    description = (
        "Enhance fine detail (scratches, cracks, texture breaks) of the query image or of a box "
        "[x1, y1, x2, y2] (0..1): returns a difference-of-Gaussians detail image and the "
        "high-frequency energy compared with the same region of the nearest good part."
    )
    parameters = {
        "type": "object",
        "properties": {"box": BOX_SCHEMA},
        "additionalProperties": False,
    }

    def run(self, episode: Episode, box: list[float] | None = None) -> ToolResult:
        b = Box(0, 0, 1, 1) if box is None else Box.from_list(box).clamped(0.05)
        ref_index = episode.product.bank.nearest(episode.grid, 1)[0][0]
        reference = episode.product.reference_image(ref_index)
        eq, er, ratio, detail = highfreq_ratio(episode.query, reference, b)
        limit = episode.product.tool_limits.highfreq_threshold
        view = visualize(detail)
        more = "more" if eq > er else "less"
        text = (
            f"High-frequency detail of region {b.to_list(3)}: energy {eq:.2f} vs {er:.2f} in the same region of "
            f"the nearest good part ({more} fine detail, ratio {ratio:.2f}; normal limit {limit:.2f})."
        )
        reading = HighFrequencyReading(box=b.to_list(), energy=eq, reference_energy=er, ratio=ratio,
                                       evidence=evidence_ratio(ratio, limit), reference=ref_index)
        return ToolResult(text=text, images=[view], reading=reading, image_captions=["high-frequency detail"])

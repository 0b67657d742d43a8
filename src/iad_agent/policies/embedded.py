"""The embedded CPU policy: evidence-driven and gated, like IndusAgent's gated RL objective.

It takes the global look (normal-bank heat map), and calls a tool only when that is expected
to change or firm up the decision: the score lies in the uncertainty band around the
threshold, the hot spot is small / fine-grained, or the product is a texture. Each tool's
reading is an *evidence ratio* (its measurement over its normal limit calibrated on good
images); the verdict fuses them with the global ratio by a weighted geometric mean, so 1.0 is
the decision boundary throughout. All knobs are in the product's ``GateParams``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from iad_agent.product import anomaly_signature
from iad_agent.types import Box, FinalAnswer, Step, ToolCall

if TYPE_CHECKING:
    from iad_agent.episode import Episode
    from iad_agent.tools.base import Tool

ZOOM, COMPARE, HIGHFREQ, PRIORS = "perceptive_zoomer", "comparative_retriever", "high_frequency_enhancer", "prior_retriever"


def fuse(global_ratio: float, evidence: list[tuple[float, float]]) -> float:
    """Weighted geometric mean of the global ratio (weight 1) and ``(ratio, weight)`` evidence.

    >>> round(fuse(0.9, [(2.0, 1.0)]), 4)
    1.3416
    """
    num = math.log(max(global_ratio, 1e-6))
    den = 1.0
    for ratio, weight in evidence:
        num += weight * math.log(min(max(ratio, 0.05), 20.0))
        den += weight
    return math.exp(num / den)


def refine_box(zoom_box: Box, zoom_map: np.ndarray, min_size: float = 0.04) -> Box:
    """Box around the hottest region of a zoom map, in full-image coordinates."""
    from iad_agent.episode import hot_spot_box

    level = 0.5 * (float(zoom_map.max()) + float(np.median(zoom_map)))
    inner = hot_spot_box(zoom_map, level, min_size=0.0)
    return Box(zoom_box.x1 + inner.x1 * zoom_box.width, zoom_box.y1 + inner.y1 * zoom_box.height,
               zoom_box.x1 + inner.x2 * zoom_box.width, zoom_box.y1 + inner.y2 * zoom_box.height).clamped(min_size)


class EmbeddedPolicy:
    """Gated evidence policy; see the module docstring."""

    name = "embedded"

    def __init__(self, always_look: bool = False) -> None:
        self.always_look = always_look

    def act(self, episode: Episode, tools: dict[str, Tool]) -> Step:
        gate = episode.product.gate
        look = episode.look
        steps = episode.trajectory.steps
        r = look.ratio
        box = look.hot_box
        if not steps:
            reasons = []
            if gate.band_low <= r <= gate.band_high:
                reasons.append(f"the score ratio {r:.2f} lies in the uncertainty band [{gate.band_low}, {gate.band_high}]")
            if gate.texture and r < gate.band_high:
                reasons.append("the product is a texture, where fine breaks hide at low resolution")
            if 0 < look.hot_area < gate.small_area and r >= gate.band_low:
                reasons.append(f"the hot spot is small ({look.hot_area:.1%} of the image)")
            if self.always_look:
                reasons.append("the policy is set to always look closer")
            thought = (f"Global look at {episode.product.name}: anomaly score {look.score:.3f} against threshold "
                       f"{look.threshold:.3f} (ratio {r:.2f}); hottest region {box.to_list(2)}.")
            if not reasons:
                return self._answer(episode, tools, thought + " The evidence is clear; no tool is needed.")
            calls = []
            if ZOOM in tools:
                calls.append(ToolCall(ZOOM, {"box": box.to_list()}))
            elif COMPARE in tools and gate.aligned_informative:
                calls.append(ToolCall(COMPARE, {"box": box.to_list()}))
            elif HIGHFREQ in tools:
                calls.append(ToolCall(HIGHFREQ, {"box": box.to_list()}))
            if not calls:
                return self._answer(episode, tools, thought + " Closer inspection is warranted but no tool is available.")
            return Step(thought=thought + " Looking closer because " + "; ".join(reasons) + ".", tool_calls=calls)
        used = {c.name for c in episode.trajectory.tool_calls}
        if len(steps) == 1 and ZOOM in used:
            zoom_box = self._box(episode)
            calls = []
            if COMPARE in tools and gate.aligned_informative:
                calls.append(ToolCall(COMPARE, {"box": zoom_box.to_list()}))
            fine = gate.texture or look.hot_area < gate.small_area
            if HIGHFREQ in tools and fine:
                calls.append(ToolCall(HIGHFREQ, {"box": zoom_box.to_list()}))
            if calls:
                zoom_text = self._evidence_text(episode)
                return Step(thought=f"{zoom_text} Checking the same region against a good part"
                            + (" and its fine detail." if len(calls) > 1 or calls[0].name == HIGHFREQ else "."), tool_calls=calls)
        return self._answer(episode, tools, self._evidence_text(episode))

    # ------------------------------------------------------------------ helpers
    def _observations(self, episode: Episode):
        for step in episode.trajectory.steps:
            for call, obs in zip(step.tool_calls, step.observations):
                if obs.ok:
                    yield call, obs

    def _box(self, episode: Episode) -> Box:
        maps = episode.memo.get("zoom_maps")
        if maps:
            return refine_box(*maps[-1])
        return episode.look.hot_box

    def _evidence_text(self, episode: Episode) -> str:
        parts = []
        for call, obs in self._observations(episode):
            ev = obs.data.get("evidence")
            if ev is not None:
                parts.append(f"{call.name.replace('_', ' ')} reads {ev:.2f}× its normal limit")
        return ("Evidence so far: " + ", ".join(parts) + ".") if parts else ""

    def _answer(self, episode: Episode, tools: dict[str, Tool], thought: str) -> Step:
        gate = episode.product.gate
        look = episode.look
        weights = {"perceptive_zoomer": gate.w_zoom, "comparative_retriever": gate.w_compare, "high_frequency_enhancer": gate.w_highfreq}
        evidence = [(obs.data["evidence"], weights[call.name]) for call, obs in self._observations(episode)
                    if call.name in weights and "evidence" in obs.data]
        fused = fuse(look.ratio, evidence)
        anomalous = fused > 1.0
        box = self._box(episode) if anomalous else look.hot_box
        confidence = round(0.5 + 0.5 * math.tanh(2.0 * abs(math.log(max(fused, 1e-6)))), 4)
        candidates: list[dict] = []
        defect_type = None
        if anomalous:
            candidates = episode.product.defects.classify(anomaly_signature(episode.grid, look.patch_map))
            defect_type = candidates[0]["defect_type"] if candidates else None
        verdict = "anomalous" if anomalous else "normal"
        reason = (f"Fused evidence {fused:.2f} (global {look.ratio:.2f}"
                  + "".join(f", {w:.2f}-weighted tool reading {e:.2f}" for e, w in evidence)
                  + f") is {'above' if anomalous else 'at or below'} 1.0, so the part is {verdict}.")
        if defect_type:
            reason += f" Closest labelled defect: {defect_type} (similarity {candidates[0]['similarity']:.2f})."
        answer = FinalAnswer(anomaly_present=anomalous, box=box if anomalous else None, defect_type=defect_type,
                             confidence=confidence, reason=reason, score=fused * look.threshold,
                             threshold=look.threshold, defect_candidates=candidates)
        return Step(thought=thought.strip(), answer=answer)

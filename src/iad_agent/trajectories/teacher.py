"""The teacher policy: drives the real tools through the one agent loop, knowing the ground truth.

Trajectory building runs :class:`TeacherPolicy` with :func:`~iad_agent.agent.loop.run_episode`
exactly like inference runs a VLM policy, so every observation (crop, aligned reference,
high-frequency view, numbers) is a real tool output and the rendered conversation is exactly
what a policy sees at inference. The teacher decides its calls from the style
(:mod:`~iad_agent.trajectories.styles`) and the sample's ground truth:

- anomalous samples: the region of interest is the box around the ground-truth mask / boxes,
  grown by a context margin and randomly jittered (so the model does not learn pixel-exact
  boxes from the prompt), and the final answer carries the exact ground-truth box and type;
- normal samples: the region is the most suspicious spot of the normal-bank heat map (the
  episode's global look), so the model also learns to clear false alarms.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING

from iad_agent.tools import ComparisonReading, HighFrequencyReading, ZoomReading
from iad_agent.trajectories.styles import COMPARE, HIGHFREQ, PRIORS, ZOOM, plan
from iad_agent.trajectories.templates import Phrasing, first_sentence
from iad_agent.types import Box, FinalAnswer, Sample, Step, ToolCall

if TYPE_CHECKING:
    from iad_agent.episode import Episode
    from iad_agent.tools.base import Tool


def jittered(box: Box, rng: random.Random, jitter: float) -> Box:
    """Shift the centre and rescale the sides by up to ``jitter`` times the box size.

    >>> b = jittered(Box(0.4, 0.4, 0.6, 0.6), random.Random(0), 0.1)
    >>> b.iou(Box(0.4, 0.4, 0.6, 0.6)) > 0.6
    True
    """
    cx, cy = box.center
    w, h = box.width, box.height
    cx += rng.uniform(-jitter, jitter) * w
    cy += rng.uniform(-jitter, jitter) * h
    w *= 1 + rng.uniform(-jitter, jitter)
    h *= 1 + rng.uniform(-jitter, jitter)
    return Box(cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2).clamped()


def region_of_interest(sample: Sample, episode: Episode, rng: random.Random, jitter: float, margin: float) -> Box:
    """Where the teacher looks: jittered ground truth (+ margin) if anomalous, else the heat map's hot spot."""
    truth = sample.ground_truth_box() if sample.is_anomalous else None
    if truth is None:
        return episode.look.hot_box
    truth = Box(*(float(v) for v in truth.to_list(None)))
    return jittered(truth.expanded(margin), rng, jitter)


@dataclass
class _Plan:
    region: Box
    turns: list[list[str]]
    truth: Box | None
    phrasing: Phrasing
    zoom_box: list[float] | None = None


class TeacherPolicy:
    """Scripted from the ground truth; see the module docstring.

    Args:
        style: ``perceptive``, ``comparative`` or ``indus-cot``.
        seed: seeds the jitter and the choice of phrasings (one teacher per sample).
        jitter: maximal shift / rescale of the region as a fraction of its size.
        margin: context added around the ground-truth box on every side, as a fraction of its size.
        fine_area: a region smaller than this share of the image counts as fine-grained
            (``indus-cot`` then adds the high-frequency enhancer); texture products always do.
    """

    name = "teacher"

    def __init__(self, style: str, seed: int = 0, jitter: float = 0.1, margin: float = 0.15, fine_area: float = 0.05) -> None:
        plan(style, False)  # validates the style name
        self.style = style
        self.rng = random.Random(seed)
        self.jitter = jitter
        self.margin = margin
        self.fine_area = fine_area

    def act(self, episode: Episode, tools: dict[str, Tool]) -> Step:
        sample = episode.trajectory.sample
        if sample is None:
            raise ValueError("the teacher needs the episode's ground-truth sample (Inspector.inspect(image, sample))")
        state: _Plan | None = episode.memo.get("teacher")
        if state is None:
            state = self._start(sample, episode, tools)
            episode.memo["teacher"] = state
        turn = len(episode.trajectory.steps)
        seen = self._describe_previous(episode, sample, state)
        if turn < len(state.turns):
            calls = [self._call(name, state) for name in state.turns[turn]]
            intent = self._intent(turn, state.turns[turn], sample, state)
            return Step(thought=" ".join(t for t in (seen, intent) if t), tool_calls=calls)
        anomalous = sample.is_anomalous
        where = state.truth or state.region
        conclusion = state.phrasing.conclusion(sample.category, anomalous, sample.defect_type, where)
        answer = FinalAnswer(
            anomaly_present=anomalous,
            box=Box.from_list(state.truth.to_list()) if anomalous and state.truth else None,
            defect_type=sample.defect_type if anomalous else None,
            reason=state.phrasing.reason(sample.category, anomalous, sample.defect_type, where),
        )
        return Step(thought=" ".join(t for t in (seen, conclusion) if t), answer=answer)

    # ----------------------------------------------------------------- planning
    def _start(self, sample: Sample, episode: Episode, tools: dict[str, Tool]) -> _Plan:
        region = region_of_interest(sample, episode, self.rng, self.jitter, self.margin)
        truth = sample.ground_truth_box() if sample.is_anomalous else None
        truth = Box(*(float(v) for v in truth.to_list(None))) if truth is not None else None
        fine = episode.product.gate.texture or (truth or region).area < self.fine_area
        turns = [[name for name in names if name in tools] for names in plan(self.style, fine)]
        return _Plan(region, [t for t in turns if t], truth, Phrasing(self.rng))

    def _call(self, name: str, state: _Plan) -> ToolCall:
        if name == PRIORS:
            return ToolCall(PRIORS, {})
        if name == ZOOM:
            return ToolCall(ZOOM, {"box": state.region.to_list()})
        return ToolCall(name, {"box": state.zoom_box or state.region.to_list()})

    # ----------------------------------------------------------------- thoughts
    def _intent(self, turn: int, names: list[str], sample: Sample, state: _Plan) -> str:
        p = state.phrasing
        parts = []
        if turn == 0:
            parts.append(p.global_look(sample.category, sample.is_anomalous, state.region))
        if PRIORS in names:
            parts.append(p.priors_intent(sample.category))
        if COMPARE in names:
            parts.append(p.compare_intent())
        if HIGHFREQ in names:
            parts.append(p.highfreq_intent())
        if turn > 0 and ZOOM in names:
            parts.append("Zooming in on the region.")
        return " ".join(parts)

    def _describe_previous(self, episode: Episode, sample: Sample, state: _Plan) -> str:
        steps = episode.trajectory.steps
        if not steps:
            return ""
        p = state.phrasing
        anomalous = sample.is_anomalous
        priors = episode.product.priors
        parts = []
        for call, obs in zip(steps[-1].tool_calls, steps[-1].observations):
            if not obs.ok:
                raise RuntimeError(f"teacher tool call {call.name} failed: {obs.text}")
            if call.name == PRIORS:
                good = priors.get("good") or priors.get("normal")
                parts.append(p.priors_seen(sample.category, first_sentence(good) if good else None))
            elif isinstance(obs.reading, ZoomReading):
                state.zoom_box = obs.reading.box
                prior = priors.get(sample.defect_type or "") if anomalous else None
                parts.append(p.zoom_seen(sample.category, anomalous, sample.defect_type, state.truth or state.region,
                                         obs.reading.evidence, first_sentence(prior) if prior else None))
            elif isinstance(obs.reading, ComparisonReading):
                parts.append(p.compare_seen(anomalous, obs.reading.region_distance, episode.product.tool_limits.compare_threshold,
                                            obs.reading.evidence))
            elif isinstance(obs.reading, HighFrequencyReading):
                parts.append(p.highfreq_seen(anomalous, sample.defect_type, obs.reading.ratio))
        return " ".join(t for t in parts if t)

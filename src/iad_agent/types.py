"""Typed core data shared by inference, evaluation, trajectory datasets and RL rollouts.

A :class:`Trajectory` is the record of one inspection episode (AgentIAD's multi-turn
"look → call tools → answer"). It is plain data; :meth:`Trajectory.to_messages` is the one
place where it becomes chat messages (text + images), so the embedded policy, VLM policies,
SFT datasets and GRPO rollouts all see the same format.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

NORMAL = 0
ANOMALOUS = 1


@dataclass(frozen=True)
class Box:
    """An axis-aligned box in normalized image coordinates ``[x1, y1, x2, y2]`` (0..1)."""

    x1: float
    y1: float
    x2: float
    y2: float

    @classmethod
    def from_list(cls, values: Sequence[float]) -> Box:
        """Build a box from four numbers; reorders inverted corners, refuses anything else.

        >>> Box.from_list([0.6, 0.1, 0.2, 0.5]).to_list()
        [0.2, 0.1, 0.6, 0.5]
        """
        if isinstance(values, (str, bytes)) or len(values) != 4:
            raise ValueError(f"a box needs four numbers [x1, y1, x2, y2], got {values!r}")
        try:
            x1, y1, x2, y2 = (float(v) for v in values)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"box coordinates must be numbers, got {values!r}") from exc
        if not all(np.isfinite([x1, y1, x2, y2])):
            raise ValueError(f"box coordinates must be finite, got {values!r}")
        return cls(min(x1, x2), min(y1, y2), max(x1, x2), max(y1, y2))

    @classmethod
    def from_pixels(cls, x1: float, y1: float, x2: float, y2: float, width: int, height: int) -> Box:
        return cls(x1 / width, y1 / height, x2 / width, y2 / height).clamped()

    @classmethod
    def from_mask(cls, mask: np.ndarray) -> Box | None:
        """The box around all nonzero pixels of a 2-D mask, or ``None`` for an empty mask."""
        ys, xs = np.nonzero(mask)
        if len(xs) == 0:
            return None
        h, w = mask.shape[:2]
        return cls(xs.min() / w, ys.min() / h, (xs.max() + 1) / w, (ys.max() + 1) / h)

    def to_list(self, ndigits: int | None = 4) -> list[float]:
        vals = [self.x1, self.y1, self.x2, self.y2]
        return [round(v, ndigits) for v in vals] if ndigits is not None else vals

    def clamped(self, min_size: float = 0.0) -> Box:
        """Clip to the unit square and grow to at least ``min_size`` per side, staying inside."""
        x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in (self.x1, self.y1, self.x2, self.y2))
        x1, x2 = _grow(x1, x2, min_size)
        y1, y2 = _grow(y1, y2, min_size)
        return Box(x1, y1, x2, y2)

    def expanded(self, margin: float) -> Box:
        """Grow by ``margin`` times the box size on every side (context), then clip."""
        dw, dh = self.width * margin, self.height * margin
        return Box(self.x1 - dw, self.y1 - dh, self.x2 + dw, self.y2 + dh).clamped()

    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)

    @property
    def center(self) -> tuple[float, float]:
        return (self.x1 + self.x2) / 2, (self.y1 + self.y2) / 2

    def iou(self, other: Box) -> float:
        """Intersection over union.

        >>> Box(0, 0, 0.5, 0.5).iou(Box(0.25, 0, 0.75, 0.5))
        0.3333333333333333
        """
        ix = max(0.0, min(self.x2, other.x2) - max(self.x1, other.x1))
        iy = max(0.0, min(self.y2, other.y2) - max(self.y1, other.y1))
        inter = ix * iy
        union = self.area + other.area - inter
        return inter / union if union > 0 else 0.0

    def contains(self, x: float, y: float) -> bool:
        return self.x1 <= x <= self.x2 and self.y1 <= y <= self.y2

    def to_pixels(self, width: int, height: int) -> tuple[int, int, int, int]:
        """Integer pixel box (left, top, right, bottom) with at least one pixel per side."""
        left = int(np.floor(self.x1 * width))
        top = int(np.floor(self.y1 * height))
        right = max(int(np.ceil(self.x2 * width)), left + 1)
        bottom = max(int(np.ceil(self.y2 * height)), top + 1)
        return left, top, min(right, width), min(bottom, height)


def _grow(lo: float, hi: float, min_size: float) -> tuple[float, float]:
    size = min(max(min_size, 0.0), 1.0)
    if hi - lo >= size:
        return lo, hi
    centre = (lo + hi) / 2
    lo = min(max(centre - size / 2, 0.0), 1.0 - size)
    return lo, lo + size


@dataclass(frozen=True)
class Sample:
    """One image to inspect, as a dataset reader returns it.

    Attributes:
        image_path: the image file.
        category: product name (e.g. ``hazelnut``).
        label: ``NORMAL`` (0) or ``ANOMALOUS`` (1).
        defect_type: the defect type for anomalous samples (``None`` for normal ones).
        mask_path: pixel ground truth (nonzero = anomalous), when the dataset has one.
        boxes: ground-truth boxes (normalized), for datasets annotated with boxes.
        box_types: the defect type of each box, parallel to ``boxes``.
        references: given good reference images for this sample (DeepPCB's template).
        dataset: reader name (``mvtec``, ``deeppcb``, ...).
        split: ``train`` / ``test`` / ``validation``.
    """

    image_path: Path
    category: str
    label: int
    defect_type: str | None = None
    mask_path: Path | None = None
    boxes: tuple[Box, ...] = ()
    box_types: tuple[str, ...] = ()
    references: tuple[Path, ...] = ()
    dataset: str = ""
    split: str = "test"

    @property
    def is_anomalous(self) -> bool:
        return self.label == ANOMALOUS

    def ground_truth_mask(self, size: tuple[int, int] | None = None) -> np.ndarray | None:
        """Binary ground truth as a bool array (H, W), from the mask file or the boxes.

        Args:
            size: ``(width, height)`` to resize to (nearest); default the mask's own size, or
                the image's size when only boxes are known.
        """
        from iad_agent.imageio import load_mask, image_size

        if self.mask_path is not None:
            return load_mask(self.mask_path, size)
        if self.boxes:
            w, h = size or image_size(self.image_path)
            mask = np.zeros((h, w), dtype=bool)
            for box in self.boxes:
                l, t, r, b = box.to_pixels(w, h)
                mask[t:b, l:r] = True
            return mask
        if self.label == NORMAL:
            w, h = size or image_size(self.image_path)
            return np.zeros((h, w), dtype=bool)
        return None

    def ground_truth_box(self) -> Box | None:
        """The box around the whole ground-truth defect area (union of boxes or mask)."""
        if self.boxes:
            return Box(
                min(b.x1 for b in self.boxes),
                min(b.y1 for b in self.boxes),
                max(b.x2 for b in self.boxes),
                max(b.y2 for b in self.boxes),
            )
        if self.mask_path is not None:
            return Box.from_mask(self.ground_truth_mask())
        return None


@dataclass
class ToolCall:
    """A request to run a tool, as a policy emitted it."""

    name: str
    arguments: dict[str, Any] = field(default_factory=dict)
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "arguments": self.arguments}


@dataclass
class ToolResult:
    """What a tool returned: text for the model, images to show, and numbers for policies.

    ``reading`` holds the tool's typed measurements (a :class:`iad_agent.tools.base.Reading`,
    e.g. ``ZoomReading``) that policies and rewards read; ``data`` is its JSON form for the
    trace (filled from ``reading`` when not given). ``error`` is set when the call was
    refused or failed, in which case ``text`` explains why so a model can correct itself on
    its next turn.
    """

    text: str
    images: list[Image.Image] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    image_captions: list[str] = field(default_factory=list)
    reading: Any = None

    def __post_init__(self) -> None:
        if self.reading is not None and not self.data:
            self.data = self.reading.to_dict()

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failure(cls, message: str) -> ToolResult:
        return cls(text=f"Error: {message}", error=message)


@dataclass
class FinalAnswer:
    """The inspection verdict.

    ``anomaly_present`` is ``None`` only for the explicit "no answer" of an episode that ran
    out of steps; evaluation counts that as wrong.
    """

    anomaly_present: bool | None
    box: Box | None = None
    defect_type: str | None = None
    confidence: float | None = None
    reason: str = ""
    score: float | None = None
    threshold: float | None = None
    defect_candidates: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def no_answer(cls, reason: str) -> FinalAnswer:
        return cls(anomaly_present=None, reason=reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "anomaly_present": self.anomaly_present,
            "box": self.box.to_list() if self.box else None,
            "defect_type": self.defect_type,
            "confidence": self.confidence,
            "reason": self.reason,
        }


@dataclass
class Step:
    """One policy turn: optional reasoning, then tool calls with their observations, or an answer.

    ``raw_output`` keeps the model's text verbatim (VLM policies) so the conversation history
    replays exactly what the model said; the embedded policy leaves it ``None`` and the turn is
    rendered from the structured fields.
    """

    thought: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    observations: list[ToolResult] = field(default_factory=list)
    answer: FinalAnswer | None = None
    raw_output: str | None = None
    parse_errors: list[str] = field(default_factory=list)
    policy_ms: float = 0.0
    tool_ms: list[float] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)


StopReason = Literal["answer", "budget", "error"]


@dataclass
class Trajectory:
    """The record of one inspection episode.

    Attributes:
        query_path: path of the inspected image (if it came from a file).
        product: product / category name.
        task: the user's instruction text (the first user turn).
        query_image: the image as the policy saw it.
        references: good reference images shown up front (MMAD-style 1-shot template).
        steps: the policy turns in order.
        answer: the final answer (``FinalAnswer.no_answer`` when the budget ran out).
        stop_reason: why the episode ended.
        evidence: the global look (normal-bank score, threshold, hot-spot box, ...).
        system_prompt: the system prompt that framed the episode.
        sample: the ground-truth sample when the episode came from a dataset.
    """

    query_image: Image.Image
    product: str
    task: str
    system_prompt: str = ""
    query_path: Path | None = None
    references: list[Image.Image] = field(default_factory=list)
    steps: list[Step] = field(default_factory=list)
    answer: FinalAnswer | None = None
    stop_reason: StopReason | None = None
    evidence: dict[str, Any] = field(default_factory=dict)
    sample: Sample | None = None
    elapsed_ms: float = 0.0

    @property
    def tool_calls(self) -> list[ToolCall]:
        return [call for step in self.steps for call in step.tool_calls]

    def to_messages(self, include_answer: bool = True) -> list[dict[str, Any]]:
        """Render the episode as chat messages, the single rendering used everywhere.

        Content parts are ``{"type": "text", "text": ...}`` and
        ``{"type": "image", "image": PIL.Image}``; backends convert image parts to their own
        form (data URLs for OpenAI-compatible servers, placeholders + an ``images`` column for
        TRL). Tool observations come back as a ``user`` turn (Qwen2.5-VL's chat template shows
        images only in user turns) whose text starts with ``<tool_response>``.
        """
        from iad_agent.agent.protocol import render_assistant_turn, render_observation

        messages: list[dict[str, Any]] = []
        if self.system_prompt:
            messages.append({"role": "system", "content": [{"type": "text", "text": self.system_prompt}]})
        first: list[dict[str, Any]] = [{"type": "image", "image": self.query_image}]
        for ref in self.references:
            first.append({"type": "image", "image": ref})
        first.append({"type": "text", "text": self.task})
        messages.append({"role": "user", "content": first})
        for step in self.steps:
            if step.answer is not None and not include_answer:
                break
            text = step.raw_output if step.raw_output is not None else render_assistant_turn(step)
            messages.append({"role": "assistant", "content": [{"type": "text", "text": text}]})
            if step.tool_calls or step.parse_errors:
                messages.append({"role": "user", "content": render_observation(step)})
        return messages

    def to_dict(self, image_paths: dict[int, str] | None = None) -> dict[str, Any]:
        """A JSON-serializable trace (images are not embedded; see the HTML report for those)."""
        steps = []
        for i, step in enumerate(self.steps):
            steps.append(
                {
                    "index": i,
                    "thought": step.thought,
                    "tool_calls": [c.to_dict() for c in step.tool_calls],
                    "observations": [
                        {"text": o.text, "data": _jsonable(o.data), "error": o.error, "n_images": len(o.images)}
                        for o in step.observations
                    ],
                    "answer": step.answer.to_dict() if step.answer else None,
                    "raw_output": step.raw_output,
                    "parse_errors": step.parse_errors,
                    "policy_ms": round(step.policy_ms, 2),
                    "tool_ms": [round(t, 2) for t in step.tool_ms],
                    "usage": step.usage,
                }
            )
        return {
            "query": str(self.query_path) if self.query_path else None,
            "product": self.product,
            "stop_reason": self.stop_reason,
            "evidence": _jsonable(self.evidence),
            "steps": steps,
            "answer": self.answer.to_dict() if self.answer else None,
        }


def _jsonable(value: Any) -> Any:
    """Convert numpy scalars/arrays and paths to plain JSON types (drops images)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items() if not isinstance(v, (Image.Image, np.ndarray)) or isinstance(v, np.ndarray) and v.size <= 16}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, Box):
        return value.to_list()
    if isinstance(value, Path):
        return str(value)
    return value


def dumps(obj: Any) -> str:
    return json.dumps(_jsonable(obj), ensure_ascii=False)


def sample_to_dict(sample: Sample) -> dict[str, Any]:
    d = asdict(sample)
    return _jsonable(d)

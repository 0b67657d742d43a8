"""What every vision-language-model policy shares, whatever serves the model.

A VLM policy renders the episode so far with :meth:`Trajectory.to_messages` (the one
rendering; images downsized to ``max_image_side``), asks its backend for the next assistant
turn, and reads the reply with :func:`~iad_agent.agent.protocol.parse_model_output` into a
:class:`~iad_agent.types.Step` that keeps the verbatim text (``raw_output``), what was wrong
with it (``parse_errors``, shown to the model on its next turn) and the token usage. Backends
(:mod:`iad_agent.policies.openai`, :mod:`iad_agent.policies.hf`) only implement ``complete``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from PIL import Image

from iad_agent.agent.protocol import parse_model_output, render_tool_call
from iad_agent.types import FinalAnswer, Step

if TYPE_CHECKING:
    from iad_agent.episode import Episode
    from iad_agent.tools.base import Tool

DEFAULT_MAX_IMAGE_SIDE = 768
_FITTED = "vlm_fitted_images"  # episode.memo key: id(original image) -> (original, downsized copy)


@dataclass
class Completion:
    """One assistant turn as a backend returned it.

    Attributes:
        text: the message text (may hold ``<think>``, ``<tool_call>`` and ``<answer>`` blocks).
        tool_calls: native function calls (``{"id", "name", "arguments"}``) when the server
            parsed them out of the text itself.
        reasoning: a separate reasoning channel some servers return (``reasoning_content``).
        usage: token counts (``prompt_tokens``, ``completion_tokens``, ``total_tokens``, ...).
        finish_reason: ``stop``, ``length`` (cut at the token limit), ``tool_calls``, ...
    """

    text: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    reasoning: str = ""
    usage: dict[str, int] = field(default_factory=dict)
    finish_reason: str | None = None


def fit_image(image: Image.Image, max_side: int | None) -> Image.Image:
    """``image`` downsized (never upsized) so that its longer side is at most ``max_side``."""
    if not max_side or max(image.size) <= max_side:
        return image
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.Resampling.LANCZOS)


def canonical_defect_type(name: str | None, known: list[str]) -> str | None:
    """``name`` spelled as one of the product's ``known`` defect types when it is one.

    >>> canonical_defect_type("Faulty Imprint", ["crack", "faulty_imprint"])
    'faulty_imprint'
    >>> canonical_defect_type("dent", ["crack"])
    'dent'
    """
    if name is None:
        return None
    key = "_".join(name.lower().replace("-", " ").split())
    for k in known:
        if "_".join(k.lower().replace("-", " ").split()) == key:
            return k
    return name


class VLMPolicy:
    """Base of the VLM backends: messages in, :class:`Step` out. Subclasses implement ``complete``.

    Args:
        max_image_side: longer side, in pixels, of every image sent to the model (``None``: as is).
        native_tools: pass the tool schemas through the backend's function-calling interface
            instead of relying on the ``<tools>`` block of the system prompt alone.
    """

    name = "vlm"
    concurrency = 1

    def __init__(self, max_image_side: int | None = DEFAULT_MAX_IMAGE_SIDE, native_tools: bool = False) -> None:
        self.max_image_side = max_image_side
        self.native_tools = native_tools

    # ------------------------------------------------------------------ backend hook
    def complete(self, messages: list[dict[str, Any]], tools: dict[str, Tool], episode: Episode) -> Completion:
        """Return the next assistant turn for ``messages`` (chat messages with PIL image parts)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared logic
    def act(self, episode: Episode, tools: dict[str, Tool]) -> Step:
        start = time.perf_counter()
        completion = self.complete(self.messages(episode), tools, episode)
        step = self.to_step(completion, episode, tools)
        step.policy_ms = (time.perf_counter() - start) * 1000
        return step

    def messages(self, episode: Episode) -> list[dict[str, Any]]:
        """The conversation so far (system, task with the query, then each turn and its
        observations), with images downsized to ``max_image_side``; ends on a user turn."""
        messages = episode.trajectory.to_messages()
        for message in messages:
            content = []
            for part in message["content"]:
                if part.get("type") == "image":
                    part = {"type": "image", "image": self.fitted(part["image"], episode)}
                content.append(part)
            message["content"] = content
        return messages

    def fitted(self, image: Image.Image, episode: Episode) -> Image.Image:
        """``image`` as sent to the model: RGB, downsized to ``max_image_side`` (cached per episode)."""
        cache: dict[int, tuple[Image.Image, Image.Image]] = episode.memo.setdefault(_FITTED, {})
        hit = cache.get(id(image))
        if hit is None or hit[0] is not image:
            hit = (image, fit_image(image.convert("RGB") if image.mode != "RGB" else image, self.max_image_side))
            cache[id(image)] = hit
        return hit[1]

    def image_size(self, episode: Episode) -> tuple[int, int]:
        """Size of the query image as the model sees it (the frame of boxes given in pixels)."""
        return fit_image(episode.trajectory.query_image, self.max_image_side).size

    def to_step(self, completion: Completion, episode: Episode, tools: dict[str, Tool]) -> Step:
        """Read a completion into a step (never raises on bad model output)."""
        turn = parse_model_output(completion.text, tools, self.image_size(episode), native_calls=completion.tool_calls)
        errors = list(turn.errors)
        if completion.finish_reason == "length" and not turn.tool_calls and turn.answer is None:
            errors.insert(0, "the reply was cut off at the token limit; think briefly, then call a tool or answer")
        raw = turn.text
        if completion.tool_calls:  # keep the trajectory in the text protocol, whatever the wire format
            native = [c for c in turn.tool_calls if c.id is not None]
            raw = "\n".join(part for part in [raw.strip(), *(render_tool_call(c) for c in native)] if part)
        thought = "\n".join(t for t in (completion.reasoning.strip(), turn.thought) if t)
        answer = self.finish_answer(turn.answer, episode) if turn.answer is not None else None
        return Step(thought=thought, tool_calls=turn.tool_calls, answer=answer, raw_output=raw, parse_errors=errors,
                    usage=dict(completion.usage))

    def finish_answer(self, answer: FinalAnswer, episode: Episode) -> FinalAnswer:
        """Spell the defect type as the product does; a normal verdict has no box and no type.

        ``score`` and ``threshold`` stay ``None``: they are the model's own only when it states
        them. The inspection JSON still shows the global look's score and threshold (the
        heat-map evidence), and evaluation ranks a VLM by its verdict and confidence, so
        its AUROC measures the model, not the normal bank.
        """
        if answer.anomaly_present:
            answer.defect_type = canonical_defect_type(answer.defect_type, list(episode.defect_types))
        else:
            answer.box, answer.defect_type = None, None
        return answer

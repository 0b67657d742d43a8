"""The text protocol between a policy and the tools (AgentIAD / Qwen2.5-VL convention).

An assistant turn is ``<think>…</think>`` followed by one or more
``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` blocks, or by
``<answer>{"anomaly_present": …, "box": […], "defect_type": …, "reason": …}</answer>``.
Tool results return as a user turn of ``<tool_response>`` text blocks plus the returned images.

Rendering lives here, next to parsing, so that what the embedded policy writes into a
trajectory, what SFT trains on and what a VLM must produce are one format.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iad_agent.types import FinalAnswer, Step, ToolCall


def render_tool_call(call: ToolCall) -> str:
    return "<tool_call>" + json.dumps(call.to_dict(), ensure_ascii=False) + "</tool_call>"


def render_answer(answer: FinalAnswer) -> str:
    return "<answer>" + json.dumps(answer.to_dict(), ensure_ascii=False) + "</answer>"


def render_assistant_turn(step: Step) -> str:
    """The assistant text for a step that has no verbatim model output."""
    parts = []
    if step.thought:
        parts.append(f"<think>{step.thought}</think>")
    parts.extend(render_tool_call(call) for call in step.tool_calls)
    if step.answer is not None:
        parts.append(render_answer(step.answer))
    return "\n".join(parts)


def render_observation(step: Step) -> list[dict[str, Any]]:
    """The user turn that carries a step's tool results (text blocks + images) back to the model."""
    content: list[dict[str, Any]] = []
    for error in step.parse_errors:
        content.append({"type": "text", "text": f"<tool_response>\nError: {error}\n</tool_response>"})
    for call, result in zip(step.tool_calls, step.observations):
        content.append({"type": "text", "text": f"<tool_response>\n[{call.name}] {result.text}\n</tool_response>"})
        for image in result.images:
            content.append({"type": "image", "image": image})
    return content

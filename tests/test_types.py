"""Core data: boxes, and the one rendering of a trajectory to chat messages."""

import doctest

import numpy as np
import pytest
from PIL import Image

import iad_agent.types as types_module
from iad_agent.agent.protocol import render_assistant_turn
from iad_agent.types import Box, FinalAnswer, Step, ToolCall, ToolResult, Trajectory


def test_doctests():
    assert doctest.testmod(types_module).failed == 0


def test_box_from_list_reorders_and_refuses():
    assert Box.from_list([0.9, 0.8, 0.1, 0.2]) == Box(0.1, 0.2, 0.9, 0.8)
    for bad in ([0, 0, 1], "0,0,1,1", [0, 0, "a", 1], [0, 0, float("nan"), 1]):
        with pytest.raises(ValueError):
            Box.from_list(bad)


def test_box_clamp_and_min_size():
    b = Box(-0.5, 0.5, 0.01, 0.52).clamped(0.1)
    assert 0 <= b.x1 < b.x2 <= 1 and 0 <= b.y1 < b.y2 <= 1
    assert b.width == pytest.approx(0.1) and b.height == pytest.approx(0.1)
    edge = Box(0.98, 0.98, 1.0, 1.0).clamped(0.2)
    assert edge.x2 == pytest.approx(1.0) and edge.width == pytest.approx(0.2)


def test_box_from_mask_and_pixels():
    mask = np.zeros((10, 20), bool)
    mask[2:5, 4:8] = True
    b = Box.from_mask(mask)
    assert b.to_pixels(20, 10) == (4, 2, 8, 5)
    assert Box.from_mask(np.zeros((4, 4), bool)) is None


def test_to_messages_renders_every_turn_with_images():
    img = Image.new("RGB", (32, 32))
    traj = Trajectory(query_image=img, product="p", task="Inspect.", system_prompt="sys")
    traj.steps.append(Step(thought="look", tool_calls=[ToolCall("perceptive_zoomer", {"box": [0, 0, 0.5, 0.5]})],
                           observations=[ToolResult("zoomed", images=[img, img])]))
    traj.steps.append(Step(thought="done", answer=FinalAnswer(True, Box(0, 0, 0.5, 0.5), "crack")))
    msgs = traj.to_messages()
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant"]
    assert sum(part["type"] == "image" for part in msgs[3]["content"]) == 2
    assert "<tool_call>" in msgs[2]["content"][0]["text"] and "<answer>" in msgs[4]["content"][0]["text"]
    assert msgs[1]["content"][0]["image"] is img
    assert len(traj.to_messages(include_answer=False)) == 4


def test_raw_model_output_is_replayed_verbatim():
    step = Step(thought="x", raw_output="<think>mine</think><tool_call>{bad json</tool_call>", parse_errors=["bad json"])
    traj = Trajectory(query_image=Image.new("RGB", (8, 8)), product="p", task="t", steps=[step])
    msgs = traj.to_messages()
    assert msgs[1]["content"][0]["text"] == step.raw_output
    assert "bad json" in msgs[2]["content"][0]["text"]
    assert render_assistant_turn(Step(thought="a")) == "<think>a</think>"

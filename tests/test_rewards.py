"""Reward functions (issue 13): doctests, and the same numbers from every completion form."""

from __future__ import annotations

import doctest
import pickle

from iad_agent import rewards
from iad_agent.rewards import (REWARDS, GatedToolReward, Rollout, accuracy_reward, as_rollout, behaviour_reward,
                               format_reward, gated_tool_reward, localization_reward, total_reward)
from iad_agent.types import FinalAnswer, Step, ToolCall, ToolResult

ZOOM = '<think>look</think>\n<tool_call>{"name": "perceptive_zoomer", "arguments": {"box": [0.1, 0.1, 0.5, 0.5]}}</tool_call>'
ANSWER = ('<think>a crack</think>\n<answer>{"anomaly_present": true, "box": [0.1, 0.1, 0.5, 0.5], '
          '"defect_type": "crack", "reason": "r"}</answer>')


def test_doctests():
    assert doctest.testmod(rewards).failed == 0


def test_rewards_are_picklable_and_named():
    for name, fn in REWARDS.items():
        again = pickle.loads(pickle.dumps(fn))
        assert getattr(again, "__name__", "").startswith(name)


def test_trl_messages_with_parsed_calls_and_environment_results():
    """TRL hands over parsed tool calls and the environment's results; the rewards see the numbers."""

    class Env:
        results = [ToolResult(text="zoom", data={"evidence": 2.0})]
        evidence = {"ratio": 1.1}

    completion = [
        {"role": "assistant", "reasoning_content": "look", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "perceptive_zoomer", "arguments": {"box": [0.1, 0.1, 0.5, 0.5]}}}]},
        {"role": "tool", "name": "perceptive_zoomer", "content": [{"type": "text", "text": "[perceptive_zoomer] zoom"}]},
        {"role": "assistant", "content": ANSWER},
    ]
    rollout = as_rollout(completion, Env())
    assert rollout.ratio == 1.1 and rollout.calls()[0][1].data["evidence"] == 2.0
    assert rollout.raw[0] == ZOOM  # rebuilt exactly as the model wrote it
    cols = {"label": [1], "box": [[0.1, 0.1, 0.5, 0.5]], "defect_type": ["crack"], "environments": [Env()]}
    assert format_reward([completion], **cols) == [1.0]
    assert accuracy_reward([completion], **cols) == [1.0]
    assert localization_reward([completion], **cols) == [1.0]
    assert behaviour_reward([completion], **cols) == [0.2]
    assert gated_tool_reward([completion], **cols) == [0.5]
    assert total_reward([completion], **cols) == [2.8]  # 0.5 format + 1 + 0.5 + 0.1 type + 0.2 + 0.5


def test_trajectories_of_the_embedded_policy(hazelnut_inspector, data_root):
    """A real episode (embedded policy on a real crack) is a completion like any other."""
    crack = hazelnut_inspector.inspect(data_root / "mvtec_ad/hazelnut/test/crack/001.png").trajectory
    good = hazelnut_inspector.inspect(data_root / "mvtec_ad/hazelnut/test/good/000.png").trajectory
    assert format_reward([crack, good]) == [1.0, 1.0]
    assert accuracy_reward([crack, good], label=[1, 0]) == [float(crack.answer.anomaly_present),
                                                            float(not good.answer.anomaly_present)]
    assert localization_reward([crack, good], label=[1, 0], box=[[0.3, 0.3, 0.6, 0.6], None])[1] is None
    values = gated_tool_reward([crack], label=[1])
    assert len(values) == 1 and (values[0] == 0.0) == (not crack.tool_calls)


def test_gate_reward_prefers_no_call_on_clear_cases():
    gate = GatedToolReward()

    def episode(ratio, calls, verdict):
        steps = [Step(tool_calls=[ToolCall("perceptive_zoomer")], observations=[ToolResult(text="", data={"evidence": 2.0})])
                 for _ in range(calls)]
        return Rollout([*steps, Step(answer=FinalAnswer(verdict))], ratio=ratio)

    clear_no_call, clear_call = gate([episode(3.0, 0, True), episode(3.0, 1, True)], label=[1, 1])
    assert clear_no_call > clear_call
    ambiguous_call_right, ambiguous_call_wrong = gate([episode(1.1, 1, True), episode(1.1, 1, False)], label=[1, 1])
    assert ambiguous_call_right > 0 > ambiguous_call_wrong

"""The text protocol's parser: what models really write, repaired or reported, never a crash.

Example-based tests name each kind of damage; property-based tests (hypothesis) mangle valid
turns at random and feed arbitrary text.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from iad_agent.agent.protocol import (
    MAX_CALLS_PER_TURN,
    ParsedTurn,
    parse_model_output,
    render_assistant_turn,
    render_observation,
)
from iad_agent.policies.vlm import Completion, VLMPolicy
from iad_agent.types import Box, FinalAnswer, Step, ToolCall, ToolResult

TOOLS = {name: object() for name in
         ("perceptive_zoomer", "comparative_retriever", "high_frequency_enhancer", "prior_retriever", "anomaly_map")}


def calls(turn: ParsedTurn) -> list[tuple[str, dict]]:
    return [(c.name, c.arguments) for c in turn.tool_calls]


# ------------------------------------------------------------------------------ well-formed turns
def test_well_formed_tool_call():
    turn = parse_model_output('<think>A dark spot.</think>\n<tool_call>{"name": "perceptive_zoomer", '
                              '"arguments": {"box": [0.1, 0.2, 0.5, 0.6]}}</tool_call>', TOOLS)
    assert turn.thought == "A dark spot."
    assert calls(turn) == [("perceptive_zoomer", {"box": [0.1, 0.2, 0.5, 0.6]})]
    assert turn.answer is None and turn.well_formed


def test_well_formed_answer():
    turn = parse_model_output('<think>ok</think><answer>{"anomaly_present": true, "box": [0.1, 0.1, 0.3, 0.4], '
                              '"defect_type": "crack", "reason": "a crack", "confidence": 0.9}</answer>')
    a = turn.answer
    assert (a.anomaly_present, a.box, a.defect_type, a.reason, a.confidence) == (True, Box(0.1, 0.1, 0.3, 0.4), "crack", "a crack", 0.9)
    assert turn.well_formed


def test_several_calls_in_one_turn():
    text = ('<think>two looks</think><tool_call>{"name": "perceptive_zoomer", "arguments": {"box": [0, 0, 0.5, 0.5]}}'
            '</tool_call>\n<tool_call>{"name": "comparative_retriever", "arguments": {"k": 2}}</tool_call>')
    assert [n for n, _ in calls(parse_model_output(text, TOOLS))] == ["perceptive_zoomer", "comparative_retriever"]
    # two objects in one block, and a JSON list of calls
    two = '<tool_call>{"name": "anomaly_map", "arguments": {}} {"name": "prior_retriever", "arguments": {}}</tool_call>'
    assert [n for n, _ in calls(parse_model_output(two, TOOLS))] == ["anomaly_map", "prior_retriever"]
    listed = '<tool_call>[{"name": "anomaly_map", "arguments": {}}, {"name": "prior_retriever", "arguments": {}}]</tool_call>'
    assert [n for n, _ in calls(parse_model_output(listed, TOOLS))] == ["anomaly_map", "prior_retriever"]


# ----------------------------------------------------------------------------------- repairs
@pytest.mark.parametrize("text", [
    'Let me zoom. <tool_call>Calling: {"name": "perceptive_zoomer", "arguments": {"box": [0.1, 0.2, 0.5, 0.6]}} now</tool_call>',
    "<tool_call>{'name': 'perceptive_zoomer', 'arguments': {'box': [0.1, 0.2, 0.5, 0.6]}}</tool_call>",
    '<tool_call>{"name": "perceptive_zoomer", "arguments": {"box": [0.1, 0.2, 0.5, 0.6],},}</tool_call>',
    '<tool_call>{"name": "perceptive_zoomer", "arguments": {"box": [0.1, 0.2, 0.5, 0.6]}}',
    '<tool_call>{"name": "perceptive_zoomer", "arguments": {"box": [0.1, 0.2, 0.5, 0.6',
    '<tool_call>```json\n{"name": "perceptive_zoomer", "arguments": {"box": [0.1, 0.2, 0.5, 0.6]}}\n```</tool_call>',
    '<tool_call>{name: "perceptive_zoomer", arguments: {box: [0.1, 0.2, 0.5, 0.6]}}</tool_call>',
    '<tool_call>{"name": "Perceptive-Zoomer", "arguments": {"box": [0.1, 0.2, 0.5, 0.6]}}</tool_call>',
    '<tool_call>{"name": "perceptive_zoomer", "arguments": "{\\"box\\": [0.1, 0.2, 0.5, 0.6]}"}</tool_call>',
    '<tool_call>{"name": "perceptive_zoomer", "box": [0.1, 0.2, 0.5, 0.6]}</tool_call>',
    '<tool_call>{"name": "perceptive_zoomer", "arguments": {"bbox_2d": [0.5, 0.6, 0.1, 0.2]}}</tool_call>',
    '<tool_call>{"name": "perceptive_zoomer", "arguments": {"box": {"x1": 0.1, "y1": 0.2, "x2": 0.5, "y2": 0.6}}}</tool_call>',
    '<tool_call>{"name": "perceptive_zoomer", "arguments": {"box": "[0.1, 0.2, 0.5, 0.6]"}}</tool_call>',
    '<TOOL_CALL>{"name": "perceptive_zoomer", "arguments": {"box": [0.1, 0.2, 0.5, 0.6]}}</TOOL_CALL>',
    '```json\n{"name": "perceptive_zoomer", "arguments": {"box": [0.1, 0.2, 0.5, 0.6]}}\n```',
    '{"name": "perceptive_zoomer", "arguments": {"box": [0.1, 0.2, 0.5, 0.6]}}</tool_call>',
    '<tool_call>{"name": "perceptive_zoomer", "arguments": {"box": [0.1, 0.2, 0.5, 0.6]}}</tool_call>'
    '<tool_call>{"name": "perceptive_zoomer", "arguments": {"box": [0.1, 0.2, 0.5, 0.6]}}</tool_call>',
])
def test_damaged_tool_call_is_repaired(text):
    turn = parse_model_output(text, TOOLS)
    assert calls(turn) == [("perceptive_zoomer", {"box": [0.1, 0.2, 0.5, 0.6]})], (turn.errors, turn.repairs)
    assert not turn.errors and turn.repairs and not turn.well_formed


def test_boxes_outside_the_image_are_clamped_or_refused():
    clamped = parse_model_output('<tool_call>{"name": "perceptive_zoomer", "arguments": {"box": [-0.2, 0.5, 1.3, 1.1]}}</tool_call>')
    assert calls(clamped) == [("perceptive_zoomer", {"box": [0.0, 0.5, 1.0, 1.0]})]
    outside = parse_model_output('<tool_call>{"name": "perceptive_zoomer", "arguments": {"box": [1.1, 0.2, 1.4, 0.5]}}</tool_call>')
    assert not outside.tool_calls and "outside the image" in outside.errors[0]
    empty = parse_model_output('<tool_call>{"name": "perceptive_zoomer", "arguments": {"box": [0.2, 0.2, 0.2, 0.5]}}</tool_call>')
    assert not empty.tool_calls and "empty" in empty.errors[0]
    short = parse_model_output('<tool_call>{"name": "perceptive_zoomer", "arguments": {"box": [0.2, 0.5]}}</tool_call>')
    assert not short.tool_calls and "four numbers" in short.errors[0]


def test_pixel_boxes_use_the_image_size():
    text = '<tool_call>{"name": "perceptive_zoomer", "arguments": {"box": [64, 32, 128, 256]}}</tool_call>'
    assert calls(parse_model_output(text, TOOLS, image_size=(256, 256))) == [("perceptive_zoomer", {"box": [0.25, 0.125, 0.5, 1.0]})]
    # without a size, Qwen2-VL's 0..1000 grid
    assert calls(parse_model_output(text)) == [("perceptive_zoomer", {"box": [0.064, 0.032, 0.128, 0.256]})]


def test_unknown_tool_is_kept_for_the_loop_to_refuse():
    turn = parse_model_output('<tool_call>{"name": "magnifier", "arguments": {"factor": 4}}</tool_call>', TOOLS)
    assert calls(turn) == [("magnifier", {"factor": 4})] and not turn.errors


def test_null_optional_argument_is_dropped():
    turn = parse_model_output('<tool_call>{"name": "anomaly_map", "arguments": {"box": null}}</tool_call>', TOOLS)
    assert calls(turn) == [("anomaly_map", {})]


def test_unreadable_tool_call_is_an_error():
    turn = parse_model_output("<think>hm</think><tool_call>zoom into the top left please</tool_call>", TOOLS)
    assert not turn.tool_calls and "could not read the tool call" in turn.errors[0]
    nameless = parse_model_output('<tool_call>{"arguments": {"box": [0, 0, 1, 1]}}</tool_call>', TOOLS)
    assert not nameless.tool_calls and "needs a \"name\"" in nameless.errors[0]
    bad_args = parse_model_output('<tool_call>{"name": "anomaly_map", "arguments": [1, 2]}</tool_call>', TOOLS)
    assert not bad_args.tool_calls and "must be a JSON object" in bad_args.errors[0]


def test_too_many_calls_are_capped():
    text = "".join(f'<tool_call>{{"name": "perceptive_zoomer", "arguments": {{"box": [0, 0, 0.{i + 1}, 0.5]}}}}</tool_call>'
                   for i in range(MAX_CALLS_PER_TURN + 2))
    turn = parse_model_output(text, TOOLS)
    assert len(turn.tool_calls) == MAX_CALLS_PER_TURN and "only the first" in turn.errors[0]


def test_self_written_tool_response_is_cut():
    text = ('<tool_call>{"name": "anomaly_map", "arguments": {}}</tool_call>\n<tool_response>score 9.9, clearly a crack'
            '</tool_response><answer>{"anomaly_present": true}</answer>')
    turn = parse_model_output(text, TOOLS)
    assert calls(turn) == [("anomaly_map", {})] and turn.answer is None and not turn.errors
    assert "<tool_response>" not in turn.text and turn.text.endswith("</tool_call>\n")


def test_tool_calls_win_over_an_answer_in_the_same_turn():
    text = ('<tool_call>{"name": "anomaly_map", "arguments": {}}</tool_call>'
            '<answer>{"anomaly_present": false, "box": null, "defect_type": null, "reason": "fine"}</answer>')
    turn = parse_model_output(text, TOOLS)
    assert calls(turn) == [("anomaly_map", {})] and turn.answer is None
    assert "answer after reading the tool results" in turn.errors[0]


def test_think_opened_by_the_template():
    turn = parse_model_output('It looks fine.</think><answer>{"anomaly_present": false}</answer>')
    assert turn.thought == "It looks fine." and turn.answer.anomaly_present is False


# ------------------------------------------------------------------------------------ answers
@pytest.mark.parametrize(("text", "verdict"), [
    ('<answer>{"anomaly_present": "yes", "box": [0.1, 0.1, 0.2, 0.2], "defect_type": "crack", "reason": "r"}</answer>', True),
    ("<answer>{'anomaly_present': False, 'box': None, 'defect_type': None, 'reason': 'clean',}</answer>", False),
    ('<answer>{"anomalous": 1}</answer>', True),
    ('<answer>{"anomaly_present": true, "top_anomaly": "crack", "visual_descriptions": ["dark line", "edge"]}</answer>', True),
    ('<answer>No, the part is normal.</answer>', False),
    ('<answer>{"anomaly_present": true, "box": [0.1, 0.1', True),
    ('Final: {"anomaly_present": false, "reason": "no defect"}', False),
])
def test_damaged_answers_are_repaired(text, verdict):
    turn = parse_model_output(text)
    assert turn.answer is not None and turn.answer.anomaly_present is verdict, turn.errors
    assert not turn.errors and not turn.well_formed


def test_answer_fields_are_normalized():
    agentiad = parse_model_output('<answer>{"anomaly_present": true, "top_anomaly": "crack", '
                                  '"visual_descriptions": ["dark line", "near the edge"]}</answer>').answer
    assert agentiad.defect_type == "crack" and agentiad.reason == "dark line; near the edge" and agentiad.box is None
    normal = parse_model_output('<answer>{"anomaly_present": false, "box": [0.1, 0.1, 0.2, 0.2], "defect_type": "crack"}</answer>').answer
    assert normal.box is None and normal.defect_type is None  # a normal part has neither
    inverted = parse_model_output('<answer>{"anomaly_present": true, "box": [0.8, 0.9, 0.2, -0.1], "defect_type": "good"}</answer>').answer
    assert inverted.box == Box(0.2, 0.0, 0.8, 0.9) and inverted.defect_type is None
    bad_box = parse_model_output('<answer>{"anomaly_present": true, "box": "somewhere left"}</answer>')
    assert bad_box.answer.box is None and any("box dropped" in r for r in bad_box.repairs)
    percent = parse_model_output('<answer>{"anomaly_present": true, "confidence": "85%"}</answer>').answer
    assert percent.confidence == 0.85


def test_answer_without_verdict_is_an_error():
    for text in ('<answer>{"defect_type": "crack", "box": [0, 0, 1, 1]}</answer>', '<answer>{"anomaly_present": "maybe"}</answer>',
                 "<answer>I cannot tell</answer>"):
        turn = parse_model_output(text)
        assert turn.answer is None and turn.errors and "<answer>" in turn.errors[0]


def test_native_calls():
    native = [{"id": "c1", "type": "function", "function": {"name": "perceptive_zoomer", "arguments": '{"box": [0.1, 0.2, 0.5, 0.6]}'}},
              {"id": "c2", "name": "anomaly_map", "arguments": ""},
              {"id": "c3", "name": "comparative_retriever", "arguments": "{broken"}]
    turn = parse_model_output("<think>look</think>", TOOLS, native_calls=native)
    assert [(c.id, c.name, c.arguments) for c in turn.tool_calls] == [("c1", "perceptive_zoomer", {"box": [0.1, 0.2, 0.5, 0.6]}),
                                                                      ("c2", "anomaly_map", {})]
    assert "comparative_retriever" in turn.errors[0] and turn.thought == "look"


@pytest.mark.parametrize("text", ["", "   ", "I think it is fine.", "<think>only thinking</think>", "\x00\xff\ufffd" * 10,
                                  "<answer></answer>", "<tool_call></tool_call>", "{", "}}}]]]", "<think><think></answer>"])
def test_garbage_is_an_error_not_a_crash(text):
    turn = parse_model_output(text, TOOLS)
    assert not turn.tool_calls and turn.answer is None and turn.errors


# --------------------------------------------------------------------------- property-based
def _assert_valid(turn: ParsedTurn) -> None:
    assert isinstance(turn, ParsedTurn)
    assert turn.tool_calls or turn.answer is not None or turn.errors
    assert len(turn.tool_calls) <= MAX_CALLS_PER_TURN
    boxes = [c.arguments["box"] for c in turn.tool_calls if "box" in c.arguments]
    if turn.answer is not None and turn.answer.box is not None:
        boxes.append(turn.answer.box.to_list(None))
    for b in boxes:
        assert len(b) == 4 and all(0.0 <= v <= 1.0 for v in b) and b[0] < b[2] and b[1] < b[3]
    for c in turn.tool_calls:
        assert isinstance(c.name, str) and isinstance(c.arguments, dict)
        json.dumps(c.arguments)


FRAGMENTS = st.sampled_from(["<think>", "</think>", "<tool_call>", "</tool_call>", "<answer>", "</answer>", "<tool_response>",
                             "{", "}", "[", "]", '"name"', '"arguments"', '"box"', '"anomaly_present"', ":", ",", "'",
                             '"perceptive_zoomer"', "true", "None", "0.5", "-3", "1e9", "NaN", " ", "\n", "```"])


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=300), st.lists(FRAGMENTS, max_size=40).map("".join)))
def test_arbitrary_text_never_crashes(text):
    _assert_valid(parse_model_output(text, TOOLS, image_size=(256, 256)))


coord = st.floats(0.0, 1.0, allow_nan=False).map(lambda v: round(v, 3))


@st.composite
def boxes(draw):
    x1, y1 = draw(st.floats(-0.3, 0.8)), draw(st.floats(-0.3, 0.8))
    return [round(x1, 3), round(y1, 3), round(x1 + draw(st.floats(0.35, 0.6)), 3), round(y1 + draw(st.floats(0.35, 0.6)), 3)]


@st.composite
def turns(draw) -> Step:
    thought = draw(st.text("abcdefgh xyz.", min_size=1, max_size=30)).strip() or "hm"
    if draw(st.booleans()):
        names = draw(st.lists(st.sampled_from(["perceptive_zoomer", "comparative_retriever", "high_frequency_enhancer"]),
                              min_size=1, max_size=3, unique=True))
        return Step(thought=thought, tool_calls=[ToolCall(n, {"box": draw(boxes())}) for n in names])
    present = draw(st.booleans())
    box = Box.from_list(draw(boxes())) if present else None
    return Step(thought=thought, answer=FinalAnswer(present, box, "crack" if present else None, 0.8, "seen"))


def mangle(text: str, which: list[str], step: Step) -> str:
    if "single_quotes" in which:
        text = text.replace('"', "'")
    if "trailing_commas" in which:
        text = text.replace("}<", ",}<").replace("]}", "],}")
    if "python_literals" in which:
        text = text.replace("true", "True").replace("false", "False").replace("null", "None")
    if "invert_box" in which:
        for call in step.tool_calls:
            b = call.arguments["box"]
            text = text.replace(json.dumps(b).replace('"', "'") if "single_quotes" in which else json.dumps(b),
                                json.dumps([b[2], b[3], b[0], b[1]]), 1)
    if "prose" in which:
        text = "Sure, here is my reply.\n" + text.replace("</think>", "</think>\nOkay then:") + "\nHope this helps"
    if "no_last_close" in which:
        for tag in ("</tool_call>", "</answer>"):
            if text.rstrip().endswith(tag):
                text = text.rstrip()[: -len(tag)]
                break
    if "upper_tags" in which:
        text = text.replace("<tool_call>", "<TOOL_CALL>").replace("</tool_call>", "</TOOL_CALL>")
    return text


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(turns(), st.lists(st.sampled_from(["single_quotes", "trailing_commas", "python_literals", "invert_box", "prose",
                                          "no_last_close", "upper_tags"]), unique=True))
def test_mangled_turns_parse_to_the_intended_step(step, which):
    original = render_assistant_turn(step)
    text = mangle(original, which, step)
    turn = parse_model_output(text, TOOLS)
    _assert_valid(turn)
    assert not turn.errors, (text, turn.errors)
    assert turn.thought == step.thought
    expected = [(c.name, {"box": Box.from_list(c.arguments["box"]).clamped().to_list()}) for c in step.tool_calls]
    assert calls(turn) == expected
    if step.answer is None:
        assert turn.answer is None
    else:
        a = turn.answer
        assert a.anomaly_present is step.answer.anomaly_present and a.defect_type == step.answer.defect_type
        assert a.reason == "seen" and a.confidence == 0.8
        if step.answer.box is not None:
            assert a.box.to_list() == step.answer.box.clamped().to_list()
    assert turn.well_formed == (text == original and all(Box.from_list(c.arguments["box"]).clamped().to_list() == c.arguments["box"]
                                                  for c in step.tool_calls)
                                and (step.answer is None or step.answer.box is None
                                     or step.answer.box.clamped().to_list() == step.answer.box.to_list()))


# ------------------------------------------------------------------------ rendering and steps
def test_render_observation_order():
    img = Image.new("RGB", (8, 8))
    step = Step(tool_calls=[ToolCall("anomaly_map", {})], observations=[ToolResult("score 1.0", images=[img])],
                parse_errors=["bad box"])
    content = render_observation(step)
    assert [p["type"] for p in content] == ["text", "text", "image"]
    assert content[0]["text"] == "<tool_response>\nError: bad box\n</tool_response>"
    assert content[1]["text"] == "<tool_response>\n[anomaly_map] score 1.0\n</tool_response>"


class FixedBackend(VLMPolicy):
    def __init__(self, completion: Completion) -> None:
        super().__init__(max_image_side=128)
        self.completion = completion

    def complete(self, messages, tools, episode):
        self.seen = messages
        return self.completion


def fake_episode():
    from iad_agent.types import Trajectory

    traj = Trajectory(query_image=Image.new("RGB", (512, 256)), product="pill", task="Inspect", system_prompt="sys")
    return SimpleNamespace(trajectory=traj, look=SimpleNamespace(score=0.7, threshold=0.5), defect_types=["faulty_imprint", "crack"],
                           memo={})


def test_vlm_step_from_completion():
    episode = fake_episode()
    text = '<think>print is off</think><answer>{"anomaly_present": true, "box": [0, 0, 64, 32], "defect_type": "Faulty Imprint"}</answer>'
    policy = FixedBackend(Completion(text, usage={"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}))
    step = policy.act(episode, TOOLS)
    assert step.answer.score is None and step.answer.threshold is None  # the model's verdict, not the normal bank's score
    assert step.answer.defect_type == "faulty_imprint"
    assert step.answer.box == Box(0, 0, 0.5, 0.5)  # pixels of the 128 x 64 image the model saw
    assert step.raw_output == text and step.thought == "print is off" and step.usage["total_tokens"] == 15
    assert step.policy_ms > 0
    assert policy.seen[1]["content"][0]["image"].size == (128, 64)


def test_vlm_step_cut_off_at_the_token_limit():
    step = FixedBackend(Completion("<think>Let me think about this very carefully", finish_reason="length")).act(fake_episode(), TOOLS)
    assert step.answer is None and not step.tool_calls and "token limit" in step.parse_errors[0]

"""The text protocol between a policy and the tools (AgentIAD / Qwen2.5-VL convention).

An assistant turn is ``<think>…</think>`` followed by one or more
``<tool_call>{"name": …, "arguments": {…}}</tool_call>`` blocks, or by
``<answer>{"anomaly_present": …, "box": […], "defect_type": …, "reason": …}</answer>``.
Tool results return as a user turn of ``<tool_response>`` text blocks plus the returned images.

Rendering lives here, next to parsing, so that what the embedded policy writes into a
trajectory, what SFT trains on and what a VLM must produce are one format.

:func:`parse_model_output` reads what a model actually writes: several calls in a turn, prose
around the JSON, single quotes, trailing commas, missing closing tags, pixel or inverted
boxes, answers with missing fields. Whatever can be repaired is (and noted in
``ParsedTurn.repairs``); whatever cannot becomes an entry of ``ParsedTurn.errors``, which the
loop shows the model on its next turn. It never raises. The format is documented in
``docs/protocol.md``.

Longer than our usual ~400 lines on purpose: rendering and lenient reading of one format are
kept side by side so that they cannot drift apart; most of the length is the list of damage
models really produce (boxes in pixels, fields under other names, ...), one small function each.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import json_repair

from iad_agent.types import Box, FinalAnswer, Step, ToolCall, ToolResult

MAX_CALLS_PER_TURN = 5

_TAG = re.compile(r"<\s*(/?)\s*(think|tool_call|answer|tool_response)\s*>", re.IGNORECASE)
_FENCE = re.compile(r"```[a-zA-Z]*")
_ARRAY_OF_OBJECTS = re.compile(r"\[\s*\{")
_DECODER = json.JSONDecoder()
_NUMBER = re.compile(r"-?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?")
_FIRST_WORD = re.compile(r"[^A-Za-z0-9]*([A-Za-z0-9\-]+)")
_TRUE = {"true", "yes", "y", "1", "anomalous", "anomaly", "abnormal", "defective", "defect", "bad", "ng"}
_FALSE = {"false", "no", "n", "0", "normal", "good", "ok", "okay", "none", "defect-free", "flawless"}
_NO_DEFECT = {"", "none", "null", "n/a", "na", "good", "normal", "no defect", "no_defect", "ok"}
_VERDICT_KEYS = ("anomaly_present", "anomalous", "is_anomalous", "anomaly", "defect_present", "has_defect",
                 "is_defective", "defective")
_BOX_KEYS = ("box", "bbox", "bbox_2d", "bounding_box")
_TYPE_KEYS = ("defect_type", "top_anomaly", "anomaly_type", "defect", "type")
_REASON_KEYS = ("reason", "explanation", "rationale", "description", "visual_descriptions")


@dataclass
class ParsedTurn:
    """One model turn read into the protocol's parts.

    Attributes:
        thought: the reasoning (``<think>`` content, else prose outside the tags).
        tool_calls: calls to run, names and boxes already repaired where possible.
        answer: the final answer, ``None`` when the turn gave none (or tool calls won).
        errors: problems the model must fix; shown to it as error observations.
        repairs: problems that were fixed silently (the turn still counts as malformed).
        text: the turn as kept: the model's text, cut where it began writing a tool response itself.
    """

    thought: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    answer: FinalAnswer | None = None
    errors: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    text: str = ""

    @property
    def well_formed(self) -> bool:
        """True when the turn followed the format exactly (for format rewards and statistics)."""
        return not self.errors and not self.repairs


# ---------------------------------------------------------------------------------------- rendering
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


def render_tool_response(call: ToolCall, result: ToolResult) -> str:
    """The text block that carries one tool result back to the model."""
    return f"<tool_response>\n[{call.name}] {result.text}\n</tool_response>"


def render_parse_error(error: str) -> str:
    """The text block that tells the model what was wrong with its last turn."""
    return f"<tool_response>\nError: {error}\n</tool_response>"


def render_observation(step: Step) -> list[dict[str, Any]]:
    """The user turn that carries a step's tool results (text blocks + images) back to the model."""
    content: list[dict[str, Any]] = []
    for error in step.parse_errors:
        content.append({"type": "text", "text": render_parse_error(error)})
    for call, result in zip(step.tool_calls, step.observations):
        content.append({"type": "text", "text": render_tool_response(call, result)})
        for image in result.images:
            content.append({"type": "image", "image": image})
    return content


# ------------------------------------------------------------------------------------------ parsing
def parse_model_output(text: str, tools: Mapping[str, Any] | None = None, image_size: tuple[int, int] | None = None,
                       native_calls: Sequence[Mapping[str, Any]] = ()) -> ParsedTurn:
    """Read one assistant turn; never raises.

    Args:
        text: the model's output for this turn.
        tools: the available tools by name (only the names are used: a near-miss such as
            ``Perceptive-Zoomer`` is mapped to ``perceptive_zoomer``; an unknown name is kept,
            and the loop answers it with an error observation listing the tools).
        image_size: ``(width, height)`` of the query image as the model saw it; boxes given in
            pixels of that image are converted to normalized coordinates.
        native_calls: function calls a server returned beside the text (OpenAI ``tool_calls``),
            each ``{"id": …, "name": …, "arguments": str | dict}``.

    Returns:
        A :class:`ParsedTurn`. Tool calls take precedence over an answer in the same turn
        (the answer is dropped with an error: answer after reading the results).
    """
    turn = ParsedTurn()
    if not isinstance(text, str):
        text = "" if text is None else str(text)
    turn.text = _cut_self_written_response(text, turn)
    blocks, free = _split_blocks(turn.text, turn)
    thoughts = [content.strip() for kind, content in blocks if kind == "think" and content.strip()]
    prose = " ".join(" ".join(free).split())
    turn.thought = "\n".join(thoughts) if thoughts else prose
    if prose and blocks:
        turn.repairs.append("text outside the <think>, <tool_call> and <answer> blocks")

    for raw in native_calls:
        _add_native_call(raw, tools, image_size, turn)
    answers: list[str] = []
    for kind, content in blocks:
        if kind == "tool_call":
            _add_text_calls(content, tools, image_size, turn)
        elif kind == "answer":
            answers.append(content)
    if not any(kind in ("tool_call", "answer") for kind, _ in blocks) and not native_calls:
        _read_untagged(" ".join(free) if free else turn.text, tools, image_size, answers, turn)
    if answers:
        answer = _read_answer(answers[0], image_size, turn)
        if len(answers) > 1:
            turn.repairs.append(f"{len(answers)} <answer> blocks; the first was used")
        if answer is not None and turn.tool_calls:
            turn.errors.append("an <answer> in the same turn as tool calls was ignored; answer after reading the tool results")
        elif answer is not None:
            turn.answer = answer
    _dedupe_and_cap(turn)
    if not turn.tool_calls and turn.answer is None and not turn.errors:
        turn.errors.append("the reply has neither a <tool_call> nor an <answer>. " + _format_reminder())
    return turn


def _format_reminder() -> str:
    from iad_agent import prompts

    return prompts.load("format_reminder.md").strip()


def _cut_self_written_response(text: str, turn: ParsedTurn) -> str:
    """Drop everything from a ``<tool_response>`` the model wrote itself (it must wait for ours)."""
    for m in _TAG.finditer(text):
        if m.group(2).lower() == "tool_response":
            turn.repairs.append("ignored a <tool_response> the model wrote itself, and all text after it")
            return text[: m.start()]
    return text


def _split_blocks(text: str, turn: ParsedTurn) -> tuple[list[tuple[str, str]], list[str]]:
    """Split into ``(kind, content)`` blocks and free text, tolerating missing/stray tags."""
    blocks: list[tuple[str, str]] = []
    free: list[str] = []
    pos = 0
    open_kind: str | None = None
    open_at = 0
    for m in _TAG.finditer(text):
        closing, kind = m.group(1) == "/", m.group(2).lower()
        if m.group(0) != f"<{m.group(1)}{kind}>":
            turn.repairs.append(f"tag {m.group(0)!r} read as <{m.group(1)}{kind}>")
        if open_kind is None:
            if closing:  # e.g. a template that opened <think> in the prompt: the text so far is the block
                blocks.append((kind, text[pos:m.start()]))
                if kind != "think":
                    turn.repairs.append(f"</{kind}> without an opening <{kind}>")
            else:
                free.append(text[pos:m.start()])
                open_kind, open_at = kind, m.end()
        elif closing and kind == open_kind:
            blocks.append((open_kind, text[open_at:m.start()]))
            open_kind = None
        else:
            blocks.append((open_kind, text[open_at:m.start()]))
            turn.repairs.append(f"<{open_kind}> was not closed before <{'/' if closing else ''}{kind}>")
            open_kind, open_at = (None, 0) if closing else (kind, m.end())
        pos = m.end()
    if open_kind is not None:
        blocks.append((open_kind, text[open_at:]))
        turn.repairs.append(f"missing </{open_kind}> at the end of the reply")
    else:
        free.append(text[pos:])
    return blocks, [f for f in free if f.strip()]


def _add_text_calls(content: str, tools: Mapping[str, Any] | None, image_size: tuple[int, int] | None,
                    turn: ParsedTurn) -> None:
    objects, errors = _json_values(content, turn)
    if errors or not objects:
        turn.errors.append(f"could not read the tool call {_clip(content)!s}: {errors[0] if errors else 'no JSON object'}; "
                           'write <tool_call>{"name": "<tool>", "arguments": {...}}</tool_call>')
        return
    for obj in objects:
        for item in obj if isinstance(obj, list) else [obj]:
            _add_call(item, tools, image_size, turn)


def _add_native_call(raw: Mapping[str, Any], tools: Mapping[str, Any] | None, image_size: tuple[int, int] | None,
                     turn: ParsedTurn) -> None:
    raw = dict(raw) if isinstance(raw, Mapping) else {}
    if isinstance(raw.get("function"), Mapping):  # the OpenAI wire form
        raw = {"id": raw.get("id"), **raw["function"]}
    arguments = raw.get("arguments")
    if isinstance(arguments, str):
        if arguments.strip():
            values, errors = _json_values(arguments, turn)
            if errors or not values or not isinstance(values[0], dict):
                turn.errors.append(f"could not read the arguments of {raw.get('name')!r} ({_clip(arguments)}): "
                                   f"{errors[0] if errors else 'not a JSON object'}")
                return
            arguments = values[0]
        else:
            arguments = {}
    _add_call({"name": raw.get("name"), "arguments": arguments if arguments is not None else {}}, tools, image_size, turn,
              call_id=raw.get("id"))


def _add_call(obj: Any, tools: Mapping[str, Any] | None, image_size: tuple[int, int] | None, turn: ParsedTurn,
              call_id: str | None = None) -> None:
    if not isinstance(obj, dict):
        turn.errors.append(f"a tool call must be a JSON object with \"name\" and \"arguments\", got {_clip(obj)}")
        return
    if isinstance(obj.get("function"), dict):
        obj = obj["function"]
    name = obj.get("name", obj.get("tool", obj.get("tool_name")))
    if not isinstance(name, str) or not name.strip():
        turn.errors.append(f"a tool call needs a \"name\": {_clip(obj)}")
        return
    if "arguments" in obj or "parameters" in obj or "args" in obj:
        arguments = obj.get("arguments", obj.get("parameters", obj.get("args")))
    else:
        arguments = {k: v for k, v in obj.items() if k not in ("name", "tool", "tool_name", "id", "type")}
        if arguments:
            turn.repairs.append(f"{name}: arguments were given beside the name instead of under \"arguments\"")
    if isinstance(arguments, str):
        values, errors = _json_values(arguments, turn) if arguments.strip() else ([{}], [])
        arguments = values[0] if values and not errors else arguments
        turn.repairs.append(f"{name}: \"arguments\" was a JSON string, not an object")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        turn.errors.append(f"{name}: \"arguments\" must be a JSON object, got {_clip(arguments)}")
        return
    name = _known_name(name.strip(), tools, turn)
    arguments = _repair_arguments(name, arguments, image_size, turn)
    if arguments is not None:
        turn.tool_calls.append(ToolCall(name, arguments, id=call_id if isinstance(call_id, str) else None))


def _known_name(name: str, tools: Mapping[str, Any] | None, turn: ParsedTurn) -> str:
    if not tools or name in tools:
        return name
    simple = re.sub(r"[\s\-.]+", "_", name.lower())
    match = simple if simple in tools else next(iter(difflib.get_close_matches(simple, list(tools), n=1, cutoff=0.85)), None)
    if match is None:
        return name  # the loop answers an unknown tool with an error listing the available ones
    turn.repairs.append(f"tool name {name!r} read as {match!r}")
    return match


def _repair_arguments(name: str, arguments: dict[str, Any], image_size: tuple[int, int] | None,
                      turn: ParsedTurn) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    for key, value in arguments.items():
        if value is None:  # optional arguments written as null
            turn.repairs.append(f"{name}: dropped null argument {key!r}")
            continue
        if key in _BOX_KEYS:
            if key != "box":
                turn.repairs.append(f"{name}: argument {key!r} read as 'box'")
            box, problem = _repair_box(value, image_size, turn, name)
            if box is None:
                turn.errors.append(f"{name}: {problem}")
                return None
            out["box"] = box.to_list()
        else:
            out[key] = value
    return out


def _repair_box(value: Any, image_size: tuple[int, int] | None, turn: ParsedTurn, who: str) -> tuple[Box | None, str]:
    """A clamped normalized box from what a model wrote, or ``(None, why not)``."""
    original = value
    if isinstance(value, str):  # "[0.1, 0.2, 0.5, 0.6]", "(0.1, 0.2) - (0.5, 0.6)", ...
        numbers = _NUMBER.findall(value)
        value = [float(v) for v in numbers] if len(numbers) == 4 else value
    if isinstance(value, dict):
        keys = [("x1", "y1", "x2", "y2"), ("xmin", "ymin", "xmax", "ymax"), ("left", "top", "right", "bottom")]
        for names in keys:
            if all(k in value for k in names):
                value = [value[k] for k in names]
                break
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, (list, tuple)) and len(v) == 2 for v in value):
        value = [*value[0], *value[1]]  # [[x1, y1], [x2, y2]]
    if isinstance(value, (list, tuple)) and len(value) == 1 and isinstance(value[0], (list, tuple)):
        value = value[0]
    try:
        if isinstance(value, (list, tuple)) and any(isinstance(v, bool) for v in value):
            raise ValueError("booleans are not coordinates")
        box = Box.from_list(value)
    except (TypeError, ValueError):
        return None, f"a box must be four numbers [x1, y1, x2, y2] in 0..1 of the query image, got {_clip(original)}"
    coords = box.to_list(None)
    if max(coords) > 1.5:  # not normalized: pixels of the image the model saw, else Qwen2-VL's 0..1000 grid
        if image_size is not None and max(box.x2 / image_size[0], box.y2 / image_size[1]) <= 1.05:
            w, h = image_size
            box = Box(box.x1 / w, box.y1 / h, box.x2 / w, box.y2 / h)
            turn.repairs.append(f"{who}: box {_clip(original)} read as pixels of a {w}x{h} image")
        elif max(coords) <= 1000:
            box = Box(*(v / 1000 for v in coords))
            turn.repairs.append(f"{who}: box {_clip(original)} read as 0..1000 coordinates")
    if box.x2 <= 0 or box.y2 <= 0 or box.x1 >= 1 or box.y1 >= 1:
        return None, f"box {_clip(original)} lies outside the image (coordinates are normalized to 0..1)"
    clamped = box.clamped()
    if clamped.area <= 0:
        return None, f"box {_clip(original)} is empty (x2 must exceed x1 and y2 exceed y1)"
    plain = isinstance(original, (list, tuple)) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in original)
    if not plain or [float(v) for v in original] != clamped.to_list(None):
        turn.repairs.append(f"{who}: box {_clip(original)} normalized to {clamped.to_list()}")
    return clamped, ""


def _read_answer(content: str, image_size: tuple[int, int] | None, turn: ParsedTurn) -> FinalAnswer | None:
    values, errors = _json_values(content, turn)
    obj = values[0] if values and not errors and isinstance(values[0], dict) else None
    if obj is None:
        word = _FIRST_WORD.match(content)
        verdict = _verdict(word.group(1)) if word else None
        if verdict is None:
            turn.errors.append(f"could not read the answer {_clip(content)}. " + _format_reminder())
            return None
        turn.repairs.append("the answer was not a JSON object; read as a plain verdict")
        return FinalAnswer(anomaly_present=verdict, reason=content.strip())
    key = next((k for k in _VERDICT_KEYS if k in obj), None)
    verdict = _verdict(obj[key]) if key else None
    if verdict is None:
        got = f"{key} = {_clip(obj[key])}" if key else "no \"anomaly_present\""
        turn.errors.append(f"the answer needs \"anomaly_present\": true or false ({got}). " + _format_reminder())
        return None
    if key != "anomaly_present":
        turn.repairs.append(f"answer field {key!r} read as 'anomaly_present'")
    elif not isinstance(obj[key], bool):
        turn.repairs.append(f"anomaly_present {_clip(obj[key])} read as {str(verdict).lower()}")
    missing = [k for k in ("box", "defect_type", "reason") if k not in obj]
    if missing:
        turn.repairs.append(f"answer without {', '.join(missing)}")
    box = None
    box_key = next((k for k in _BOX_KEYS if k in obj), None)
    if verdict and box_key and obj[box_key] not in (None, [], ""):
        box, problem = _repair_box(obj[box_key], image_size, turn, "answer")
        if box is None:
            turn.repairs.append(f"answer: {problem}; box dropped")
    type_key = next((k for k in _TYPE_KEYS if k in obj), None)
    defect_type = obj[type_key] if type_key else None
    if isinstance(defect_type, list):
        defect_type = defect_type[0] if defect_type else None
    defect_type = str(defect_type).strip() if defect_type is not None else None
    if not verdict or (defect_type is not None and defect_type.lower() in _NO_DEFECT):
        defect_type = None
    reason_key = next((k for k in _REASON_KEYS if k in obj), None)
    reason = obj[reason_key] if reason_key else ""
    if isinstance(reason, list):
        reason = "; ".join(str(r) for r in reason)
    return FinalAnswer(anomaly_present=verdict, box=box, defect_type=defect_type, confidence=_confidence(obj.get("confidence")),
                       reason=str(reason) if reason is not None else "")


def _verdict(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().strip("\"'.!").lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    return None


def _confidence(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        c = float(str(value).strip().rstrip("%"))
    except ValueError:
        return None
    if c > 1 and c <= 100:
        c /= 100
    return round(c, 4) if 0 <= c <= 1 else None


def _read_untagged(text: str, tools: Mapping[str, Any] | None, image_size: tuple[int, int] | None, answers: list[str],
                   turn: ParsedTurn) -> None:
    """No tags at all: accept bare JSON tool calls / answers in the prose (e.g. in a code fence)."""
    objects, _ = _json_values(text, ParsedTurn())
    for obj in objects:
        items = obj if isinstance(obj, list) else [obj]
        for item in items:
            if isinstance(item, dict) and ("name" in item or "function" in item) and not any(k in item for k in _VERDICT_KEYS):
                turn.repairs.append("a tool call without <tool_call> tags")
                _add_call(item, tools, image_size, turn)
            elif isinstance(item, dict) and any(k in item for k in _VERDICT_KEYS):
                turn.repairs.append("an answer without <answer> tags")
                answers.append(json.dumps(item))


def _dedupe_and_cap(turn: ParsedTurn) -> None:
    seen: list[tuple[str, str]] = []
    kept: list[ToolCall] = []
    for call in turn.tool_calls:
        key = (call.name, json.dumps(call.arguments, sort_keys=True, default=str))
        if key in seen:
            turn.repairs.append(f"dropped a repeated call of {call.name}")
            continue
        seen.append(key)
        kept.append(call)
    if len(kept) > MAX_CALLS_PER_TURN:
        turn.errors.append(f"{len(kept)} tool calls in one turn; only the first {MAX_CALLS_PER_TURN} were run")
        kept = kept[:MAX_CALLS_PER_TURN]
    turn.tool_calls = kept


# ------------------------------------------------------------------------------ lenient JSON reading
def _json_values(text: str, turn: ParsedTurn) -> tuple[list[Any], list[str]]:
    """Every top-level JSON object (or array of objects) in ``text``, repaired where needed.

    Well-formed values are read exactly (``json.JSONDecoder.raw_decode``, several in a row
    included); from the first damaged one on, the rest of the text goes to ``json_repair``
    (single quotes, trailing commas, unquoted keys, Python literals, values cut off). Returns
    the values and, when none could be read, the reasons; the repairs behind values that were
    read are appended to ``turn.repairs``.
    """
    s = _FENCE.sub(" ", text)
    values: list[Any] = []
    notes: list[str] = []
    outside: list[str] = []
    problem = ""
    pos = 0
    while (start := _next_opening(s, pos)) >= 0:
        outside.append(s[pos:start])
        try:
            value, pos = _DECODER.raw_decode(s, start)
        except (json.JSONDecodeError, RecursionError) as exc:
            problem = f"{exc.msg} at character {exc.pos - start}" if isinstance(exc, json.JSONDecodeError) else "nested too deeply"
            repaired = _repair(s[start:], many=s[start] == "{")
            if repaired:
                values.extend(repaired)
                notes.append("repaired invalid JSON (quotes, commas, literals or a value cut off)")
            pos = len(s)
            break
        values.append(value)
    outside.append(s[pos:])
    if not values:
        return [], [f"invalid JSON ({problem})" if problem else "no JSON object found"]
    if "".join(outside).strip():
        notes.append("ignored text around the JSON")
    if s != text:
        notes.append("ignored a markdown code fence")
    turn.repairs.extend(notes)
    return values, []


def _repair(chunk: str, many: bool) -> list[Any]:
    """The JSON values ``json_repair`` reads from ``chunk`` (``[]`` when it reads none).

    ``many``: the chunk starts with an object, so a list back means several objects in a row.
    """
    try:
        value = json_repair.loads(chunk)
    except Exception:  # noqa: BLE001 - a third-party parser on arbitrary model output: never crash on it
        return []
    if many and isinstance(value, list):
        return [v for v in value if isinstance(v, (dict, list))]
    return [value] if isinstance(value, (dict, list)) else []


def _next_opening(s: str, pos: int) -> int:
    """Index of the next ``{`` (or ``[`` that starts an array of objects) at or after ``pos``."""
    brace = s.find("{", pos)
    bracket = _ARRAY_OF_OBJECTS.search(s, pos)
    if bracket and (brace < 0 or bracket.start() < brace):
        return bracket.start()
    return brace


def _clip(value: Any, n: int = 80) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str) if not isinstance(value, str) else value
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"

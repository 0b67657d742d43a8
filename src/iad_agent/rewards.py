"""Reward functions for reinforcement learning (AgentIAD's perception + behaviour rewards, IndusAgent's gate).

Every reward has TRL's signature ``f(completions, **dataset_columns) -> list[float | None]``
(``None``: the reward does not apply to that completion, e.g. localisation on a good part), so
the same functions serve ``GRPOTrainer`` (:mod:`iad_agent.training.grpo`), the learned gate of
the embedded policy (:mod:`iad_agent.training.gate`) and the analysis of benchmark runs. A
completion may be

- a string: one assistant turn in the protocol of ``docs/protocol.md``;
- a list of chat messages: TRL's multi-turn completion (assistant turns, with ``tool_calls``
  when TRL parsed them, and ``tool`` messages in between);
- a :class:`~iad_agent.types.Trajectory`: a whole episode of our own agent loop (or a
  :class:`Rollout`, the form every other one is read into).

The ground truth comes as dataset columns, one value per completion: ``label`` (0 normal,
1 anomalous), ``box`` (normalised ``[x1, y1, x2, y2]`` around the defect, or ``None``) and
``defect_type``. A trajectory without those columns falls back to its ``sample``. The tools'
measurements (``evidence``: the tool's reading over its calibrated normal limit) and the global
look's ratio (score / threshold) come with trajectories, or from TRL's ``environments`` (an
object with ``results``, the :class:`~iad_agent.types.ToolResult` of each call in order, and
``evidence``, the global look). Rewards read no files and no models.

Parametrised rewards are small picklable classes; their module-level instances carry the
defaults. Weights are set where the rewards are combined (``GRPORunConfig.reward_weights``,
``GateTrainConfig``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from iad_agent.agent.protocol import parse_model_output, render_tool_call
from iad_agent.types import Box, FinalAnswer, Sample, Step, ToolCall, ToolResult, Trajectory

ZOOM, COMPARE = "perceptive_zoomer", "comparative_retriever"


@dataclass
class Rollout:
    """A completion read into turns, whatever form it came in."""

    steps: list[Step]
    ratio: float | None = None  # the global look's score / threshold, before any tool
    sample: Sample | None = None
    raw: list[str | None] = field(default_factory=list)  # each turn's text as the model wrote it

    @property
    def answer(self) -> FinalAnswer | None:
        last = self.steps[-1] if self.steps else None
        return last.answer if last is not None else None

    def calls(self) -> list[tuple[ToolCall, ToolResult | None]]:
        """Every tool call in order, with its result when known."""
        out = []
        for step in self.steps:
            for i, call in enumerate(step.tool_calls):
                out.append((call, step.observations[i] if i < len(step.observations) else None))
        return out

    def running_ratios(self) -> list[float | None]:
        """The evidence before each call: the geometric mean of the global ratio and the earlier readings."""
        logs = [] if self.ratio is None else [math.log(max(self.ratio, 1e-6))]
        out: list[float | None] = []
        for _, result in self.calls():
            out.append(math.exp(sum(logs) / len(logs)) if logs else None)
            value = evidence_of(result)
            if value is not None and logs:
                logs.append(math.log(min(max(value, 0.05), 20.0)))
        return out


def evidence_of(result: ToolResult | None) -> float | None:
    """A tool's reading over its normal limit, if it measured one (its typed ``Evidence`` reading;
    ``data`` for a result read back from JSON, which has no typed reading)."""
    if result is None or not result.ok:
        return None
    value = getattr(result.reading, "evidence", None) if result.reading is not None else result.data.get("evidence")
    return float(value) if value is not None else None


def _message_text(message: dict[str, Any]) -> str:
    """An assistant message as the protocol text the model wrote (TRL splits off thinking and calls)."""
    content = message.get("content") or ""
    if not isinstance(content, str):
        content = "".join(p.get("text") or "" for p in content if isinstance(p, dict) and p.get("type") == "text")
    parts = [f"<think>{message['reasoning_content']}</think>"] if message.get("reasoning_content") else []
    if content.strip():
        parts.append(content.strip())
    for call in message.get("tool_calls") or []:
        fn = call.get("function", call)
        parts.append(render_tool_call(ToolCall(fn.get("name", ""), fn.get("arguments") or {})))
    return "\n".join(parts)


def _step(text: str) -> Step:
    turn = parse_model_output(text)
    return Step(thought=turn.thought, tool_calls=turn.tool_calls, answer=turn.answer, raw_output=text,
                parse_errors=list(turn.errors))


def as_rollout(completion: Any, environment: Any = None) -> Rollout:
    """Read one completion (string, TRL messages, :class:`Trajectory` or :class:`Rollout`) into a :class:`Rollout`."""
    if isinstance(completion, Rollout):
        return completion
    if isinstance(completion, Trajectory):
        return Rollout(list(completion.steps), completion.evidence.get("ratio"), completion.sample,
                       [s.raw_output for s in completion.steps])
    if isinstance(completion, str):
        return Rollout([_step(completion)], raw=[completion])
    steps: list[Step] = []
    raw: list[str | None] = []
    for message in completion:
        if message.get("role") == "assistant":
            text = _message_text(message)
            steps.append(_step(text))
            raw.append(text)
        elif message.get("role") == "tool" and steps:
            content = message.get("content")
            text = content if isinstance(content, str) else "".join(p.get("text") or "" for p in content if isinstance(p, dict))
            steps[-1].observations.append(ToolResult(text=text))
    rollout = Rollout(steps, raw=raw)
    if environment is not None:  # the environment ran the calls: take its results, with their numbers
        results = iter(getattr(environment, "results", []))
        for step in steps:
            step.observations = [next(results, obs) for obs in step.observations]
        rollout.ratio = (getattr(environment, "evidence", None) or {}).get("ratio")
    return rollout


def _rollouts(completions: Sequence[Any], environments: Sequence[Any] | None) -> list[Rollout]:
    envs = list(environments) if environments is not None else [None] * len(completions)
    return [as_rollout(c, e) for c, e in zip(completions, envs)]


def _column(values: Sequence[Any] | None, i: int) -> Any:
    return values[i] if values is not None and i < len(values) else None


def _truth(rollout: Rollout, label: Sequence[Any] | None, i: int) -> int | None:
    value = _column(label, i)
    if value is None and rollout.sample is not None:
        value = rollout.sample.label
    return None if value is None else int(value)


def _truth_box(rollout: Rollout, box: Sequence[Any] | None, i: int) -> Box | None:
    value = _column(box, i)
    if value is not None and len(value) == 4:
        return Box.from_list(value)
    if value is None and rollout.sample is not None and rollout.sample.boxes:
        return rollout.sample.ground_truth_box()
    return None


def _same_type(a: str | None, b: str | None) -> bool:
    def key(t: str | None) -> str:
        return "_".join(str(t or "").lower().replace("-", " ").split())

    return bool(key(a)) and key(a) == key(b)


def _right(rollout: Rollout, truth: int) -> bool:
    answer = rollout.answer
    return answer is not None and answer.anomaly_present is not None and answer.anomaly_present == bool(truth)


# ------------------------------------------------------------------------------------------ rewards
def format_reward(completions: Sequence[Any], environments: Sequence[Any] | None = None, **_: Any) -> list[float | None]:
    """A well-formed turn sequence in the protocol, ending with a valid answer.

    Each turn scores 1.0 when it follows the format exactly, 0.5 when the parser had to repair
    it (prose outside the tags, single quotes, a missing closing tag, ...) and 0.0 when it
    could not be read; the reward is the mean over turns, or 0.0 when the last turn gives no
    valid answer.

    >>> good = '<think>clear</think>\\n<answer>{"anomaly_present": false, "box": null, "defect_type": null, "reason": "ok"}</answer>'
    >>> repaired = "<answer>{'anomaly_present': False, 'box': None, 'defect_type': None, 'reason': 'ok'}</answer>"
    >>> format_reward([good, repaired, "no idea"])
    [1.0, 0.5, 0.0]
    """
    out: list[float | None] = []
    for rollout in _rollouts(completions, environments):
        if rollout.answer is None or rollout.answer.anomaly_present is None:
            out.append(0.0)
            continue
        scores = []
        for step, text in zip(rollout.steps, rollout.raw or [None] * len(rollout.steps)):
            if text is None:  # rendered by our own policy: well formed unless it recorded errors
                scores.append(0.0 if step.parse_errors else 1.0)
                continue
            turn = parse_model_output(text)
            scores.append(1.0 if turn.well_formed else 0.5 if not turn.errors else 0.0)
        out.append(sum(scores) / len(scores))
    return out


def accuracy_reward(completions: Sequence[Any], label: Sequence[Any] | None = None,
                    environments: Sequence[Any] | None = None, **_: Any) -> list[float | None]:
    """1.0 for the right normal / anomalous verdict in a valid answer, else 0.0 (AgentIAD).

    >>> yes = '<answer>{"anomaly_present": true, "box": null, "defect_type": null, "reason": "r"}</answer>'
    >>> accuracy_reward([yes, yes, "<think>hm</think>"], label=[1, 0, 1])
    [1.0, 0.0, 0.0]
    """
    out: list[float | None] = []
    for i, rollout in enumerate(_rollouts(completions, environments)):
        truth = _truth(rollout, label, i)
        out.append(None if truth is None else float(_right(rollout, truth)))
    return out


class LocalizationReward:
    """IoU of the zoom box(es) and the answer box with the ground-truth box (AgentIAD's spatial alignment).

    A box scores ``min(1, IoU / full_credit_iou)`` (full credit above IoU 0.5). The reward is the
    mean of the best zoom box's score (when the model zoomed) and the answer box's score (when
    it answered anomalous: a missing box scores 0); 0.0 when it did neither. ``None`` for good
    parts and for parts without a ground-truth box.

    >>> zoom = '<tool_call>{"name": "perceptive_zoomer", "arguments": {"box": [0.0, 0.0, 0.5, 0.5]}}</tool_call>'
    >>> answer = '<answer>{"anomaly_present": true, "box": [0.0, 0.0, 0.25, 0.5], "defect_type": null, "reason": "r"}</answer>'
    >>> turns = [{"role": "assistant", "content": zoom}, {"role": "tool", "content": "[perceptive_zoomer] ..."},
    ...          {"role": "assistant", "content": answer}]
    >>> localization_reward([turns, answer, answer], label=[1, 1, 0], box=[[0, 0, 0.5, 0.5]] * 3)
    [1.0, 1.0, None]
    """

    __name__ = "localization_reward"

    def __init__(self, full_credit_iou: float = 0.5) -> None:
        self.full_credit_iou = full_credit_iou

    def score(self, predicted: Box, truth: Box) -> float:
        return min(1.0, predicted.iou(truth) / self.full_credit_iou)

    def __call__(self, completions: Sequence[Any], label: Sequence[Any] | None = None, box: Sequence[Any] | None = None,
                 environments: Sequence[Any] | None = None, **_: Any) -> list[float | None]:
        out: list[float | None] = []
        for i, rollout in enumerate(_rollouts(completions, environments)):
            truth, truth_box = _truth(rollout, label, i), _truth_box(rollout, box, i)
            if truth != 1 or truth_box is None:
                out.append(None)
                continue
            parts = []
            zooms = [Box.from_list(c.arguments["box"]) for c, _ in rollout.calls()
                     if c.name == ZOOM and isinstance(c.arguments.get("box"), list) and len(c.arguments["box"]) == 4]
            if zooms:
                parts.append(max(self.score(b, truth_box) for b in zooms))
            answer = rollout.answer
            if answer is not None and answer.anomaly_present:
                parts.append(self.score(answer.box, truth_box) if answer.box is not None else 0.0)
            out.append(sum(parts) / len(parts) if parts else 0.0)
        return out


localization_reward = LocalizationReward()


def defect_type_reward(completions: Sequence[Any], label: Sequence[Any] | None = None,
                       defect_type: Sequence[Any] | None = None, environments: Sequence[Any] | None = None,
                       **_: Any) -> list[float | None]:
    """1.0 when an anomalous part is answered anomalous with the right defect type, else 0.0.

    Spelling is forgiven (``Faulty-Imprint`` = ``faulty_imprint``); ``None`` for good parts and
    for parts of unknown type. AgentIAD weighs it 0.1.

    >>> a = '<answer>{"anomaly_present": true, "box": null, "defect_type": "Broken Large", "reason": "r"}</answer>'
    >>> defect_type_reward([a, a, a], label=[1, 1, 0], defect_type=["broken_large", "crack", None])
    [1.0, 0.0, None]
    """
    out: list[float | None] = []
    for i, rollout in enumerate(_rollouts(completions, environments)):
        truth = _truth(rollout, label, i)
        kind = _column(defect_type, i)
        if kind is None and rollout.sample is not None:
            kind = rollout.sample.defect_type
        if truth != 1 or not kind:
            out.append(None)
            continue
        answer = rollout.answer
        out.append(float(answer is not None and bool(answer.anomaly_present) and _same_type(answer.defect_type, kind)))
    return out


class BehaviourReward:
    """AgentIAD's efficient tool use: useful steps earn credit, extra calls cost, the retriever pays when warranted.

    With ``n`` tool calls: ``step_credit`` for every call whose reading points to the true
    verdict (its evidence ratio is above 1 on an anomalous part, at or below 1 on a good one),
    minus ``call_cost`` for every call beyond ``free_calls``, plus ``retriever_credit`` when the
    comparative retriever was called on an ambiguous case (the global ratio inside
    ``[band_low, band_high]``). 0.0 without calls; ``None`` without a label.

    >>> def result(e):
    ...     return ToolResult(text="", data={"evidence": e})
    >>> steps = [Step(tool_calls=[ToolCall("perceptive_zoomer"), ToolCall("comparative_retriever")],
    ...               observations=[result(1.8), result(0.7)]), Step(answer=FinalAnswer(True))]
    >>> rollout = Rollout(steps, ratio=1.2)
    >>> BehaviourReward()([rollout], label=[1])  # 0.2 (zoom agrees) - 0.1 (2nd call) + 0.2 (retriever, ambiguous)
    [0.3]
    """

    __name__ = "behaviour_reward"

    def __init__(self, step_credit: float = 0.2, call_cost: float = 0.1, free_calls: int = 1,
                 retriever_credit: float = 0.2, band_low: float = 0.75, band_high: float = 1.5) -> None:
        self.step_credit, self.call_cost, self.free_calls = step_credit, call_cost, free_calls
        self.retriever_credit, self.band_low, self.band_high = retriever_credit, band_low, band_high

    def __call__(self, completions: Sequence[Any], label: Sequence[Any] | None = None,
                 environments: Sequence[Any] | None = None, **_: Any) -> list[float | None]:
        out: list[float | None] = []
        for i, rollout in enumerate(_rollouts(completions, environments)):
            truth = _truth(rollout, label, i)
            if truth is None:
                out.append(None)
                continue
            calls = rollout.calls()
            agree = sum(1 for _, r in calls if (e := evidence_of(r)) is not None and (e > 1.0) == bool(truth))
            value = self.step_credit * agree - self.call_cost * max(0, len(calls) - self.free_calls)
            ambiguous = rollout.ratio is not None and self.band_low <= rollout.ratio <= self.band_high
            if ambiguous and any(c.name == COMPARE for c, _ in calls):
                value += self.retriever_credit
            out.append(round(value, 6))
        return out


behaviour_reward = BehaviourReward()


class GatedToolReward:
    """IndusAgent's gate: a tool call pays only when the answer is right and the tool was needed.

    Exact definition. Let ``r_k`` be the evidence before call ``k``: the global look's ratio
    (score / threshold) for the first call, then the geometric mean of that ratio and the
    readings (evidence ratios) of the calls before ``k``. Call ``k`` was *needed* when
    ``band_low <= r_k <= band_high`` (the evidence before it was ambiguous) or when
    ``(r_k > 1)`` differs from the final verdict (the decision changed after it); with no
    global ratio known, every call counts as needed. With ``right`` = the answer is valid and
    correct::

        reward = gain * [right and some call was needed]
                 - cost * #{calls k that are not (right and needed_k)}

    0.0 without tool calls; ``None`` without a label.

    >>> def rollout(ratio, n_calls, verdict):
    ...     steps = [Step(tool_calls=[ToolCall("perceptive_zoomer")], observations=[ToolResult(text="")])
    ...              for _ in range(n_calls)]
    ...     return Rollout(steps + [Step(answer=FinalAnswer(verdict))], ratio=ratio)
    >>> r = GatedToolReward()
    >>> r([rollout(1.1, 1, False), rollout(3.0, 1, True), rollout(1.1, 2, True), rollout(0.5, 1, True), rollout(3.0, 0, True)],
    ...   label=[0, 1, 0, 1, 1])
    [0.5, -0.1, -0.2, 0.5, 0.0]
    """

    __name__ = "gated_tool_reward"

    def __init__(self, gain: float = 0.5, cost: float = 0.1, band_low: float = 0.75, band_high: float = 1.5) -> None:
        self.gain, self.cost, self.band_low, self.band_high = gain, cost, band_low, band_high

    def needed(self, before: float | None, verdict: bool | None) -> bool:
        if before is None:
            return True
        return self.band_low <= before <= self.band_high or (verdict is not None and (before > 1.0) != verdict)

    def __call__(self, completions: Sequence[Any], label: Sequence[Any] | None = None,
                 environments: Sequence[Any] | None = None, **_: Any) -> list[float | None]:
        out: list[float | None] = []
        for i, rollout in enumerate(_rollouts(completions, environments)):
            truth = _truth(rollout, label, i)
            if truth is None:
                out.append(None)
                continue
            right = _right(rollout, truth)
            verdict = rollout.answer.anomaly_present if rollout.answer is not None else None
            paid = [right and self.needed(before, verdict) for before in rollout.running_ratios()]
            value = self.gain * any(paid) - self.cost * sum(1 for p in paid if not p)
            out.append(round(value, 6))
        return out


gated_tool_reward = GatedToolReward()

#: Every reward by name, with its AgentIAD / IndusAgent default weight.
REWARDS = {
    "format": format_reward,
    "accuracy": accuracy_reward,
    "localization": localization_reward,
    "defect_type": defect_type_reward,
    "behaviour": behaviour_reward,
    "gated_tool": gated_tool_reward,
}
DEFAULT_WEIGHTS = {"format": 0.5, "accuracy": 1.0, "localization": 0.5, "defect_type": 0.1, "behaviour": 1.0, "gated_tool": 1.0}


def total_reward(completions: Sequence[Any], weights: dict[str, float] | None = None, **columns: Any) -> list[float]:
    """The weighted sum of the rewards (``None`` counts as 0), as ``GRPOTrainer`` combines them.

    >>> yes = '<think>t</think>\\n<answer>{"anomaly_present": true, "box": null, "defect_type": null, "reason": "r"}</answer>'
    >>> total_reward([yes], {"format": 0.5, "accuracy": 1.0}, label=[1])
    [1.5]
    """
    weights = DEFAULT_WEIGHTS if weights is None else weights
    totals = [0.0] * len(completions)
    for name, weight in weights.items():
        if not weight:
            continue
        for i, value in enumerate(REWARDS[name](completions, **columns)):
            totals[i] += weight * (value or 0.0)
    return [round(t, 6) for t in totals]

"""Data of the text-mode RL benchmark: cached episodes, the text teacher, SFT rows, GRPO rows, the environment.

- :func:`prepare_cases`: per category a product registered from ``shots`` good images drawn as
  the benchmark draws them, and for each test image (capped, both labels kept) an episode with
  its global look and the zoom on its hot spot already computed. Every later use (teacher, GRPO
  rollouts, evaluation) copies the episode with :func:`~iad_agent.policies.text.fresh_episode`,
  so features, look and tool results are computed once per image.
- :class:`TextTeacher`: the teacher of :mod:`iad_agent.trajectories.teacher` restricted to what a
  text model can know. That teacher zooms where the ground-truth defect is and writes long
  thoughts about pixels; a text model sees neither, so this one zooms on the hot spot of the
  global look, and only when the look is ambiguous (ratio inside IndusAgent's gate band, as
  :class:`~iad_agent.rewards.GatedToolReward` defines it), then answers the ground truth
  (the verdict; box and type null: the text model cannot place a box better than the hot
  spot it was given), each turn with a one-word thought (tokens are the cost on a CPU).
- :class:`TextEnvironment`: TRL's ``environment_factory`` environment of
  :mod:`iad_agent.training.environment` on the cached episodes and the text-mode tools.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from iad_agent.agent.protocol import render_tool_call
from iad_agent.training.environment import InspectionEnvironment
from iad_agent.types import FinalAnswer, Sample, Step, ToolCall

if TYPE_CHECKING:
    from iad_agent.episode import Episode

ZOOM = "perceptive_zoomer"
BAND = (0.75, 1.5)  # GatedToolReward's default band: a call is needed when the evidence before it lies here


@dataclass
class Case:
    """One labelled image with its prepared episode (global look and hot-spot zoom computed)."""

    sample: Sample
    episode: Episode

    @property
    def box(self) -> list[float] | None:
        truth = self.sample.ground_truth_box() if self.sample.is_anomalous else None
        return truth.to_list() if truth is not None else None


def hot_box(episode: Episode) -> list[float]:
    """The global look's hot spot, rounded as text mode shows it."""
    return [round(float(v), 2) for v in episode.look.hot_box.to_list()]


def parse_spec(spec: str) -> tuple[str, str]:
    """``"mvtec:grid"`` → ``("mvtec", "grid")``; a bare dataset name is its own category (``magnetic_tile``)."""
    dataset, _, category = spec.partition(":")
    return dataset, category or dataset


def prepare_cases(specs: list[str], cfg: Any, progress: Callable[[int, int], None] | None = None) -> list[Case]:
    """Cases of the ``dataset:category`` specs (see the module docstring)."""
    from iad_agent.datasets import load_dataset
    from iad_agent.eval.plan import cap_test, default_root, draw_references, split_dataset
    from iad_agent.inspector import Inspector
    from iad_agent.policies.text import text_tools
    from iad_agent.product import Product
    from iad_agent.tools.priors import domain_priors

    plan = []
    for spec in specs:
        dataset, category = parse_spec(spec)
        root = default_root(dataset)
        split = split_dataset(load_dataset(dataset, root, None if dataset == category else category))
        if split.protocol == "given" or not split.pool:
            raise ValueError(f"{spec}: no pool of good images to register the product from")
        plan.append((category, split.pool, cap_test(split.test, cfg.max_per_category)))
    total = sum(len(test) for _, _, test in plan)
    tools = text_tools()
    cases: list[Case] = []
    for category, pool, test in plan:
        refs = draw_references(pool, cfg.shots, cfg.seed, category)
        product = Product.build(category, refs, priors=domain_priors(category), allow_mixed_sizes=True)
        inspector = Inspector(product, tools=tools, max_steps=cfg.max_steps)
        for sample in test:
            if progress:
                progress(len(cases), total)
            episode, _ = inspector.episode(sample.image_path, sample)
            look = episode.look
            episode.trajectory.evidence.update({"score": look.score, "threshold": look.threshold, "ratio": look.ratio,
                                                "hot_box": look.hot_box.to_list(), "hot_area": look.hot_area})
            tools[ZOOM]({"box": hot_box(episode)}, episode)  # cached in episode.memo for everyone after
            cases.append(Case(sample, episode))
    if progress:
        progress(total, total)
    return cases


class TextTeacher:
    """Scripted from the ground truth and the global look; see the module docstring."""

    name = "text-teacher"

    def act(self, episode: Episode, tools: dict[str, Any]) -> Step:
        sample = episode.trajectory.sample
        if sample is None:
            raise ValueError("the text teacher needs the episode's ground-truth sample")
        steps = episode.trajectory.steps
        ratio = episode.look.ratio
        box = hot_box(episode)
        if not steps and BAND[0] <= ratio <= BAND[1] and ZOOM in tools:
            thought = "unclear"
            call = ToolCall(ZOOM, {"box": box})
            return Step(thought=thought, tool_calls=[call],
                        raw_output=f"<think>{thought}</think>\n{render_tool_call(call)}")
        anomalous = sample.is_anomalous
        verdict = "defect" if anomalous else "normal"
        thought = verdict
        answer = FinalAnswer(anomalous)
        shown = {"anomaly_present": anomalous, "box": None, "defect_type": None, "reason": ""}
        return Step(thought=thought, answer=answer,
                    raw_output=f"<think>{thought}</think>\n<answer>{json.dumps(shown)}</answer>")


def sft_rows(cases: list[Case], max_steps: int, progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    """One prompt-completion row per teacher turn: prompt = the text-mode conversation so far, completion = the turn."""
    from iad_agent.agent.loop import run_episode
    from iad_agent.policies.text import fresh_episode, text_messages, text_tools

    tools = text_tools()
    rows = []
    for i, case in enumerate(cases):
        if progress:
            progress(i, len(cases))
        episode = fresh_episode(case.episode)
        run_episode(TextTeacher(), tools, episode, max_steps)
        steps = list(episode.trajectory.steps)
        for k, step in enumerate(steps):
            episode.trajectory.steps = steps[:k]
            rows.append({"prompt": text_messages(episode, max_steps),
                         "completion": [{"role": "assistant", "content": [{"type": "text", "text": step.raw_output}]}]})
        episode.trajectory.steps = steps
    if progress:
        progress(len(cases), len(cases))
    return rows


def grpo_rows(cases: list[Case], max_steps: int) -> list[dict[str, Any]]:
    """GRPO prompts: the text-mode prompt, the ground truth for the rewards, the image the environment looks up."""
    from iad_agent.policies.text import text_prompt

    return [{"prompt": text_prompt(c.episode.product.name, c.episode.look, max_steps),
             "source_image": str(c.sample.image_path), "category": c.sample.category, "bank": [],
             "label": int(c.sample.label), "box": c.box, "defect_type": c.sample.defect_type} for c in cases]


class TextEnvironment(InspectionEnvironment):
    """A rollout on a cached episode with the text-mode tools (no feature extraction, no repeated tool work)."""

    def __init__(self, episodes: dict[str, Episode], tools: dict[str, Any] | None = None) -> None:
        from iad_agent.policies.text import text_tools

        super().__init__(products=None, tools=tools or text_tools(), max_image_side=None, text_mode=True)
        self.episodes = episodes

    def reset(self, source_image: str, **_: Any) -> str | None:
        from iad_agent.policies.text import fresh_episode

        if source_image not in self.episodes:
            raise ValueError(f"{source_image}: no prepared episode for this image")
        self.episode = fresh_episode(self.episodes[source_image])
        self.evidence = dict(self.episode.trajectory.evidence)
        self.results, self.calls = [], []
        return None

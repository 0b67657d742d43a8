"""Train the embedded policy's gate by group-relative policy gradient (IndusAgent's gated RL, on CPU).

1. **Rollouts** (:func:`collect`): for every labelled image of the training categories, the
   embedded policy runs once per gate action (answer now / zoom / zoom + compare) through the
   real inspector and tools (features and tool results shared between the runs), and once with
   the hand-set band for comparison. Each run is a :class:`~iad_agent.types.Trajectory`, scored
   with the project's reward functions (:mod:`iad_agent.rewards`: accuracy + gated tool +
   behaviour, weights in :class:`GateTrainConfig`). Tools are deterministic, so every sampled
   rollout of GRPO below is one of these runs: sampling costs nothing.
2. **GRPO** (:func:`train`): per image, ``group_size`` actions are sampled from the current
   softmax policy; advantage = (reward - group mean) / group std; the policy-gradient step
   ``A * d log pi(a|x) / dW`` (Adam, L2) is averaged over images and groups.
3. **Leave-category-out** (:func:`leave_category_out`): for each category, train on the others
   and compare the learned gate (most probable action) with the hand-set band on it:
   balanced accuracy and tool calls per image.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from iad_agent.policies.gate import ACTIONS, LearnedGate
from iad_agent.types import Trajectory

log = logging.getLogger(__name__)


@dataclass
class GateTrainConfig:
    """Settings of ``iad train gate`` (rollout collection, GRPO, reward weights)."""

    shots: int | str = 4  # good images registered per category (drawn as the benchmark draws them)
    seed: int = 0
    max_test_per_category: int = 60
    group_size: int = 8
    epochs: int = 300
    learning_rate: float = 0.05
    l2: float = 1e-3
    weights: dict[str, float] = field(default_factory=lambda: {"accuracy": 1.0, "gated_tool": 0.2, "behaviour": 0.0})
    balance: bool = True  # weigh images so that every category, and both labels in it, count alike


#: The reward components recorded per action (combined with ``GateTrainConfig.weights`` when training).
COMPONENTS = ("accuracy", "gated_tool", "behaviour")


@dataclass
class Outcome:
    """One image: the gate's input, the allowed actions, and each action's (and the hand gate's) result.

    ``components[name]`` holds that reward for each action and, last, for the hand-set gate.
    """

    category: str
    label: int
    features: np.ndarray
    mask: np.ndarray
    components: dict[str, np.ndarray]
    verdicts: list[bool | None]  # per action, then the hand-set gate
    calls: list[int]  # tool calls per action (priors look-ups included), then the hand-set gate

    def rewards(self, weights: dict[str, float]) -> np.ndarray:
        """Weighted reward per action, then the hand-set gate's."""
        return sum(w * self.components[name] for name, w in weights.items() if w)


def components(trajectories: list[Trajectory], label: int) -> dict[str, np.ndarray]:
    """Each reward component of each trajectory, with the project's reward functions (None counts 0)."""
    from iad_agent.rewards import REWARDS

    n = len(trajectories)
    return {name: np.array([v or 0.0 for v in REWARDS[name](trajectories, label=[label] * n)]) for name in COMPONENTS}


def outcome(product: Any, sample: Any, config: GateTrainConfig) -> Outcome:
    """Run every gate action (and the hand-set gate) on one image; see the module docstring."""
    from iad_agent.inspector import Inspector
    from iad_agent.policies.embedded import EmbeddedPolicy
    from iad_agent.policies.gate import ForcedGate, action_mask, gate_features
    from iad_agent.tools import default_tools
    from iad_agent.tools.cache import ToolCache, cached_tools

    tools = cached_tools(default_tools(), ToolCache())
    prepared = Inspector(product, EmbeddedPolicy(), tools).prepare(sample.image_path)  # once, shared by every run
    runs = []
    for policy in [EmbeddedPolicy(gate=ForcedGate(a)) for a in range(len(ACTIONS))] + [EmbeddedPolicy()]:
        runs.append(Inspector(product, policy, tools).inspect(prepared, sample).trajectory)
    ep, _ = Inspector(product, EmbeddedPolicy(), tools).episode(prepared)  # the global look the gate decides from
    mask = action_mask(ep, tools, EmbeddedPolicy())
    return Outcome(sample.category, int(sample.label), gate_features(ep), mask, components(runs, int(sample.label)),
                   [r.answer.anomaly_present if r.answer else None for r in runs], [len(r.tool_calls) for r in runs])


def collect(categories: list[tuple[str, str, str]], config: GateTrainConfig,
            progress: Callable[[int, int, str], None] | None = None) -> list[Outcome]:
    """Outcomes for ``(dataset, root, category)`` triples: product from ``shots`` good images, test images capped."""
    from iad_agent.datasets import load_dataset
    from iad_agent.eval.plan import cap_test, draw_references, split_dataset
    from iad_agent.product import Product
    from iad_agent.tools.priors import domain_priors

    plan = []
    for dataset, root, category in categories:
        split = split_dataset(load_dataset(dataset, root, category))
        if split.protocol == "given" or not split.pool:
            log.warning("%s/%s: no reference pool (given templates); left out of gate training", dataset, category)
            continue
        plan.append((category, split.pool, cap_test(split.test, config.max_test_per_category)))
    total = sum(len(t) for _, _, t in plan)
    out: list[Outcome] = []
    for category, pool, test in plan:
        refs = draw_references(pool, config.shots, config.seed, category)
        product = Product.build(category, refs, priors=domain_priors(category), allow_mixed_sizes=True)
        for sample in test:
            if progress:
                progress(len(out), total, category)
            out.append(outcome(product, sample, config))
    if progress:
        progress(total, total, "done")
    return out


def _softmax(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    logits = np.where(mask, logits, -np.inf)
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


def train(outcomes: list[Outcome], config: GateTrainConfig, on_epoch: Callable[[int, float], None] | None = None) -> LearnedGate:
    """Group-relative policy gradient over the cached outcomes; returns the trained gate."""
    if not outcomes:
        raise ValueError("no training outcomes: the training categories gave no labelled image")
    rng = np.random.default_rng(config.seed)
    x = np.stack([o.features for o in outcomes])  # (n, f)
    mask = np.stack([o.mask for o in outcomes])  # (n, a)
    rewards = np.stack([np.where(o.mask, o.rewards(config.weights)[:-1], 0.0) for o in outcomes])
    weight = sample_weights(outcomes) if config.balance else np.full(len(outcomes), 1.0 / len(outcomes))
    gate = LearnedGate.zeros()
    m, v = np.zeros_like(gate.weights), np.zeros_like(gate.weights)
    n, g = len(outcomes), config.group_size
    for epoch in range(config.epochs):
        p = _softmax(x @ gate.weights.T, mask)  # (n, a)
        sampled = np.stack([rng.choice(len(ACTIONS), size=g, p=row) for row in p])  # (n, g)
        r = np.take_along_axis(rewards, sampled, axis=1)
        std = r.std(axis=1, keepdims=True)
        adv = np.where(std > 1e-9, (r - r.mean(axis=1, keepdims=True)) / np.maximum(std, 1e-9), 0.0)
        onehot = np.eye(len(ACTIONS))[sampled]  # (n, g, a)
        grad_logp = onehot - p[:, None, :]  # d log pi(a|x) / d logits
        grad = np.einsum("nga,ng,nf,n->af", grad_logp, adv, x, weight) / g - config.l2 * gate.weights
        m = 0.9 * m + 0.1 * grad
        v = 0.999 * v + 0.001 * grad**2
        gate.weights += config.learning_rate * (m / (1 - 0.9 ** (epoch + 1))) / (np.sqrt(v / (1 - 0.999 ** (epoch + 1))) + 1e-8)
        if on_epoch:
            on_epoch(epoch, float((p * rewards).sum(axis=1).mean()))
    gate.meta = {"config": asdict(config), "n_images": n, "categories": sorted({o.category for o in outcomes})}
    return gate


def sample_weights(outcomes: list[Outcome]) -> np.ndarray:
    """Weights summing to 1 under which every category, and each label within it, counts alike (balanced accuracy)."""
    groups: dict[tuple[str, int], int] = {}
    for o in outcomes:
        groups[(o.category, o.label)] = groups.get((o.category, o.label), 0) + 1
    labels_per_cat = {c: sum(1 for (cc, _) in groups if cc == c) for c, _ in groups}
    n_cat = len(labels_per_cat)
    return np.array([1.0 / (n_cat * labels_per_cat[o.category] * groups[(o.category, o.label)]) for o in outcomes])


def greedy_actions(gate: LearnedGate, outcomes: list[Outcome]) -> list[int]:
    return [int(np.argmax(gate.probabilities(o.features, o.mask))) for o in outcomes]


def _balanced(verdicts: list[bool | None], labels: list[int]) -> float | None:
    accs = []
    for label in (0, 1):
        idx = [i for i, y in enumerate(labels) if y == label]
        if idx:
            accs.append(sum(verdicts[i] is not None and verdicts[i] == bool(label) for i in idx) / len(idx))
    return float(np.mean(accs)) if accs else None


def compare(gate: LearnedGate, outcomes: list[Outcome], weights: dict[str, float]) -> dict[str, Any]:
    """Learned vs hand-set gate on ``outcomes``: balanced accuracy, tool calls per image, mean reward."""
    actions = greedy_actions(gate, outcomes)
    labels = [o.label for o in outcomes]

    def side(picks: list[int]) -> dict[str, Any]:
        return {"balanced_accuracy": _balanced([o.verdicts[a] for o, a in zip(outcomes, picks)], labels),
                "tool_calls_per_image": float(np.mean([o.calls[a] for o, a in zip(outcomes, picks)])),
                "mean_reward": float(np.mean([o.rewards(weights)[a] for o, a in zip(outcomes, picks)]))}

    return {"n_images": len(outcomes),
            "learned": {**side(actions), "actions": {name: actions.count(i) for i, name in enumerate(ACTIONS)}},
            "hand_set": side([len(ACTIONS)] * len(outcomes))}


def leave_category_out(outcomes: list[Outcome], config: GateTrainConfig) -> dict[str, Any]:
    """Per category: train on the other categories, compare on this one; plus the mean over categories."""
    per: dict[str, Any] = {}
    for category in sorted({o.category for o in outcomes}):
        held = [o for o in outcomes if o.category == category]
        gate = train([o for o in outcomes if o.category != category], config)
        per[category] = compare(gate, held, config.weights)
    mean = {side: {k: float(np.mean([r[side][k] for r in per.values() if r[side][k] is not None]))
                   for k in ("balanced_accuracy", "tool_calls_per_image", "mean_reward")} for side in ("learned", "hand_set")}
    return {"categories": per, "mean": mean}

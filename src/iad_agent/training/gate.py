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

Options (:class:`GateTrainConfig`): a two-way gate (answer now / look closer with every tool the
product's learned weights allow), one that starts from and is held towards the hand-set band,
synthetic material made from unregistered good images (:func:`synthetic_material`), and the
advantage without the group-std scaling (Dr. GRPO). Their leave-category-out numbers are in
``docs/training.md`` (``experiments/gate_lco.py``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from iad_agent.policies.gate import ACTIONS, FEATURES, LOOK_ACTIONS, LearnedGate, feature_vector, look_action
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
    two_way: bool = False  # actions: answer now / look closer with every tool the product's weights allow
    features: tuple[str, ...] = FEATURES  # the gate's inputs (names in ``policies.gate``)
    scale_rewards: bool = True  # advantage over the group std (GRPO); False: reward - group mean only (Dr. GRPO)
    band_prior: bool = False  # two-way only: start from (and regularise towards) the hand-set band's decision
    synthetic_good: int = 0  # held-out good images per category (pool images not registered) as training material
    synthetic_defects: int = 0  # synthetic defects made from those good images (``vision.synthetic``) per category


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
    info: dict[str, Any] = field(default_factory=dict)  # raw evidence (ratio, hot area, tool weights, hand-set tools)

    def rewards(self, weights: dict[str, float]) -> np.ndarray:
        """Weighted reward per action, then the hand-set gate's."""
        return sum(w * self.components[name] for name, w in weights.items() if w)


def components(trajectories: list[Trajectory], label: int) -> dict[str, np.ndarray]:
    """Each reward component of each trajectory, with the project's reward functions (None counts 0)."""
    from iad_agent.rewards import REWARDS

    n = len(trajectories)
    return {name: np.array([v or 0.0 for v in REWARDS[name](trajectories, label=[label] * n)]) for name in COMPONENTS}


def outcome(product: Any, sample: Any, config: GateTrainConfig, image: Any = None) -> Outcome:
    """Run every gate action (and the hand-set gate) on one image; see the module docstring.

    ``image``: a PIL image to inspect instead of ``sample.image_path`` (a synthetic defect).
    """
    from iad_agent.inspector import Inspector
    from iad_agent.policies.embedded import EmbeddedPolicy
    from iad_agent.policies.gate import ForcedGate, action_mask, gate_features
    from iad_agent.tools import default_tools
    from iad_agent.tools.cache import ToolCache, cached_tools

    tools = cached_tools(default_tools(), ToolCache())
    from iad_agent.policies.gate import gate_evidence

    prepared = Inspector(product, EmbeddedPolicy(), tools).prepare(sample.image_path if image is None else image)  # once, shared by every run
    runs = []
    for policy in [EmbeddedPolicy(gate=ForcedGate(a)) for a in range(len(ACTIONS))] + [EmbeddedPolicy()]:
        runs.append(Inspector(product, policy, tools).inspect(prepared, sample).trajectory)
    ep, _ = Inspector(product, EmbeddedPolicy(), tools).episode(prepared)  # the global look the gate decides from
    mask = action_mask(ep, tools, EmbeddedPolicy())
    info = {**gate_evidence(ep), "path": str(sample.image_path),
            "hand_tools": [c.name for c in runs[-1].tool_calls], "synthetic": getattr(sample, "split", "") == "synthetic"}
    return Outcome(sample.category, int(sample.label), gate_features(ep), mask, components(runs, int(sample.label)),
                   [r.answer.anomaly_present if r.answer else None for r in runs], [len(r.tool_calls) for r in runs], info)


def collect(categories: list[tuple[str, str, str]], config: GateTrainConfig,
            progress: Callable[[int, int, str], None] | None = None, labelled: bool = True) -> list[Outcome]:
    """Outcomes for ``(dataset, root, category)`` triples: product from ``shots`` good images, test images capped.

    With ``config.synthetic_defects``, each category also gives outcomes on good pool images that
    were not registered (label 0) and on synthetic defects made from them (label 1), marked
    ``info["synthetic"]``: training material that needs no defect label. ``labelled=False``
    collects only that material.
    """
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
        refs = draw_references(split.pool, config.shots, config.seed, category)
        test = cap_test(split.test, config.max_test_per_category) if labelled else []
        plan.append((category, refs, test, synthetic_material(category, split.pool, refs, config)))
    total = sum(len(t) + len(s) for _, _, t, s in plan)
    out: list[Outcome] = []
    for category, refs, test, synthetic in plan:
        product = Product.build(category, refs, priors=domain_priors(category), allow_mixed_sizes=True)
        for sample, image in [(s, None) for s in test] + synthetic:
            if progress:
                progress(len(out), total, category)
            out.append(outcome(product, sample, config, image if image is None else image()))
    if progress:
        progress(total, total, "done")
    return out


def synthetic_material(category: str, pool: list, refs: list, config: GateTrainConfig) -> list[tuple[Any, Any]]:
    """``(sample, image loader)`` pairs: unregistered good pool images and synthetic defects made from them.

    The loaders are called one at a time (images are not all held in memory); a good image's
    loader is ``None`` (its file is inspected).
    """
    from iad_agent.types import Sample

    if not config.synthetic_defects:
        return []
    registered = {str(p) for p in refs}
    rest = [p for p in pool if str(p) not in registered]
    rng = np.random.default_rng([config.seed, 13])
    good = [rest[i] for i in sorted(rng.choice(len(rest), size=min(config.synthetic_good or 1, len(rest)), replace=False))] if rest else []
    if not good:  # every good image is registered: defects are made from the registered ones
        good = list(refs[:1])
    out: list[tuple[Any, Any]] = [(Sample(p, category, 0, split="synthetic"), None) for p in good[:config.synthetic_good]]

    def maker(i: int) -> Callable[[], Any]:
        def make() -> Any:
            from iad_agent.imageio import load_image
            from iad_agent.vision.synthetic import DEFECT_MAKERS

            kinds = sorted(DEFECT_MAKERS)
            image, _ = DEFECT_MAKERS[kinds[i % len(kinds)]](load_image(good[i % len(good)]), np.random.default_rng([config.seed, i]))
            return image
        return make

    out += [(Sample(good[i % len(good)], category, 1, split="synthetic"), maker(i)) for i in range(config.synthetic_defects)]
    return out


def _softmax(logits: np.ndarray, mask: np.ndarray) -> np.ndarray:
    logits = np.where(mask, logits, -np.inf)
    p = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return p / p.sum(axis=-1, keepdims=True)


def inputs(outcome: Outcome, names: tuple[str, ...]) -> np.ndarray:
    """The gate's input vector for one outcome (from its recorded evidence when it has one)."""
    if "ratio" in outcome.info:
        return feature_vector(outcome.info, names)
    if tuple(names) != FEATURES:
        raise ValueError(f"outcome of {outcome.category} has no recorded evidence for features {names}")
    return outcome.features


def _view(o: Outcome, two_way: bool) -> tuple[np.ndarray, np.ndarray]:
    """Mask and per-action reward-index of an outcome under the gate's action set (indices into ACTIONS)."""
    if not two_way:
        return o.mask, np.arange(len(ACTIONS))
    return np.array([True, bool(o.mask[1:].any())]), np.array([0, look_action(o.mask)])


def initial_gate(config: GateTrainConfig) -> LearnedGate:
    """Zeros, or (``band_prior``) a two-way gate that looks closer exactly where the hand-set band does."""
    actions = LOOK_ACTIONS if config.two_way else ACTIONS
    gate = LearnedGate.zeros(actions, tuple(config.features))
    if config.band_prior:
        if not config.two_way or "in_band" not in config.features:
            raise ValueError("band_prior needs two_way=True and the 'in_band' feature")
        gate.weights[1, list(config.features).index("in_band")] = 2.0
        gate.weights[1, list(config.features).index("bias")] = -1.0
    return gate


def train(outcomes: list[Outcome], config: GateTrainConfig, on_epoch: Callable[[int, float], None] | None = None) -> LearnedGate:
    """Group-relative policy gradient over the cached outcomes; returns the trained gate."""
    if not outcomes:
        raise ValueError("no training outcomes: the training categories gave no labelled image")
    rng = np.random.default_rng(config.seed)
    x = np.stack([inputs(o, tuple(config.features)) for o in outcomes])  # (n, f)
    views = [_view(o, config.two_way) for o in outcomes]
    mask = np.stack([m for m, _ in views])  # (n, a)
    rewards = np.stack([np.where(m, o.rewards(config.weights)[:-1][idx], 0.0) for o, (m, idx) in zip(outcomes, views)])
    weight = sample_weights(outcomes) if config.balance else np.full(len(outcomes), 1.0 / len(outcomes))
    gate = initial_gate(config)
    prior = gate.weights.copy()
    n_actions = len(gate.actions)
    m, v = np.zeros_like(gate.weights), np.zeros_like(gate.weights)
    n, g = len(outcomes), config.group_size
    for epoch in range(config.epochs):
        p = _softmax(x @ gate.weights.T, mask)  # (n, a)
        sampled = np.stack([rng.choice(n_actions, size=g, p=row) for row in p])  # (n, g)
        r = np.take_along_axis(rewards, sampled, axis=1)
        std = r.std(axis=1, keepdims=True)
        adv = r - r.mean(axis=1, keepdims=True)
        if config.scale_rewards:  # GRPO; Dr. GRPO leaves it out, keeping a catch (+1) worth more than a call's cost
            adv = np.where(std > 1e-9, adv / np.maximum(std, 1e-9), 0.0)
        onehot = np.eye(n_actions)[sampled]  # (n, g, a)
        grad_logp = onehot - p[:, None, :]  # d log pi(a|x) / d logits
        grad = np.einsum("nga,ng,nf,n->af", grad_logp, adv, x, weight) / g - config.l2 * (gate.weights - prior)
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
        groups[(_source(o), o.label)] = groups.get((_source(o), o.label), 0) + 1
    labels_per_cat = {c: sum(1 for (cc, _) in groups if cc == c) for c, _ in groups}
    n_cat = len(labels_per_cat)
    return np.array([1.0 / (n_cat * labels_per_cat[_source(o)] * groups[(_source(o), o.label)]) for o in outcomes])


def _source(o: Outcome) -> str:
    """A category's labelled images and its synthetic material count as two sources."""
    return o.category + (" (synthetic)" if o.info.get("synthetic") else "")


def greedy_actions(gate: LearnedGate, outcomes: list[Outcome]) -> list[int]:
    """The gate's most probable action per outcome, as indices into ``ACTIONS``."""
    return [gate.decide(inputs(o, gate.features), o.mask) for o in outcomes]


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
        hand = len(ACTIONS)
        gate_calls = [(len([t for t in o.info.get("hand_tools", []) if t != "prior_retriever"]) if a == hand else a)
                      for o, a in zip(outcomes, picks)]  # zoom / compare only (the gate's own choice)
        return {"balanced_accuracy": _balanced([o.verdicts[a] for o, a in zip(outcomes, picks)], labels),
                "tool_calls_per_image": float(np.mean([o.calls[a] for o, a in zip(outcomes, picks)])),
                "gate_calls_per_image": float(np.mean(gate_calls)),
                "mean_reward": float(np.mean([o.rewards(weights)[a] for o, a in zip(outcomes, picks)]))}

    return {"n_images": len(outcomes),
            "learned": {**side(actions), "actions": {name: actions.count(i) for i, name in enumerate(ACTIONS)}},
            "hand_set": side([len(ACTIONS)] * len(outcomes))}


def leave_category_out(outcomes: list[Outcome], config: GateTrainConfig, labelled: bool = True) -> dict[str, Any]:
    """Per category: train on the other categories, compare on this one; plus the mean over categories.

    Synthetic material (``info["synthetic"]``) of every category, the held-out one included, is
    used for training (it is made from good images alone); ``labelled=False`` trains on it only.
    """
    per: dict[str, Any] = {}
    for category in sorted({o.category for o in outcomes if not o.info.get("synthetic")}):
        held = [o for o in outcomes if o.category == category and not o.info.get("synthetic")]
        # the held-out category's synthetic material is made from its good images alone (as at registration)
        gate = train([o for o in outcomes if (labelled and o.category != category) or o.info.get("synthetic")], config)
        per[category] = compare(gate, held, config.weights)
    mean = {side: {k: float(np.mean([r[side][k] for r in per.values() if r[side][k] is not None]))
                   for k in ("balanced_accuracy", "tool_calls_per_image", "gate_calls_per_image", "mean_reward")} for side in ("learned", "hand_set")}
    return {"categories": per, "mean": mean}

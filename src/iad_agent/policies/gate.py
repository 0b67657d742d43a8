"""A gate that learns (IndusAgent's gated RL): which tools the embedded policy calls, if any.

The hand-set gate calls the tools when the global score ratio lies in a fixed band. The
learned gate is a small stochastic policy: a softmax over the actions *answer now*, *zoom*
and *zoom + compare with the aligned good part* (or, two-way, *answer now* / *look closer with
every tool the product's learned tool weights allow*), linear in the evidence the policy already has
after its global look (the score ratio and its distance from the decision boundary, the hot
spot's size, texture-likeness, whether position-wise comparison is meaningful). Actions the
product cannot take (a tool of weight 0, position-based tools when shapes differ) are masked.
It is trained by group-relative policy gradient on the project's reward functions
(:mod:`iad_agent.training.gate`); at inference it takes the most probable action.

Saved as a small JSON file (``iad train gate --out gate.json``); installed into a registered
product as ``learned_gate.json`` it replaces the hand-set band for that product.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from iad_agent.tools import ComparativeRetriever, PerceptiveZoomer
from iad_agent.types import Step, ToolCall

if TYPE_CHECKING:
    from iad_agent.episode import Episode
    from iad_agent.policies.embedded import EmbeddedPolicy
    from iad_agent.tools.base import Tool

ZOOM, COMPARE = PerceptiveZoomer.name, ComparativeRetriever.name
ACTIONS = ("none", "zoom", "zoom+compare")
#: The two-way gate: answer now, or look closer with every tool the product's learned tool weights
#: allow (what the hand-set band does inside its band). Which tools is left to the tool weights.
LOOK_ACTIONS = ("none", "look")
FEATURES = ("bias", "log_ratio", "abs_log_ratio", "near_boundary", "hot_area", "texture", "aligned")
#: Further inputs a gate may use: the hand-set band's own decision, and the global ratio's distance
#: from the boundary in units of what the tools can move the fused verdict (``|log r| * (1 + W) / W``
#: with ``W`` the weights of the tools a look calls; see :func:`~iad_agent.policies.embedded.fuse`).
EXTRA_FEATURES = ("in_band", "tool_reach")
INSTALLED_NAME = "learned_gate.json"
FORMAT_VERSION = 1


def gate_evidence(episode: Episode) -> dict[str, Any]:
    """What the gate may decide from, after the global look (the inputs of :func:`feature_vector`)."""
    look, gate = episode.look, episode.product.gate
    return {"ratio": float(look.ratio), "hot_area": float(look.hot_area), "texture": bool(gate.texture),
            "aligned": bool(gate.aligned_informative), "w_zoom": float(gate.w_zoom), "w_compare": float(gate.w_compare),
            "band_low": float(gate.band_low), "band_high": float(gate.band_high)}


def _tool_reach(ev: dict[str, Any]) -> float:
    w = ev["w_zoom"] + (ev["w_compare"] if ev["aligned"] and ev["w_zoom"] > 0 else 0.0)
    lr = abs(math.log(max(ev["ratio"], 1e-6)))
    return min(lr * (1 + w) / w, 5.0) if w > 0 else 5.0


_FEATURE_FNS: dict[str, Any] = {
    "bias": lambda ev: 1.0,
    "log_ratio": lambda ev: math.log(max(ev["ratio"], 1e-6)),
    "abs_log_ratio": lambda ev: abs(math.log(max(ev["ratio"], 1e-6))),
    "near_boundary": lambda ev: math.exp(-((math.log(max(ev["ratio"], 1e-6)) / 0.25) ** 2)),
    "hot_area": lambda ev: min(ev["hot_area"] * 10, 1.0),
    "texture": lambda ev: float(ev["texture"]),
    "aligned": lambda ev: float(ev["aligned"]),
    "in_band": lambda ev: float(ev["band_low"] <= ev["ratio"] <= ev["band_high"]),
    "tool_reach": _tool_reach,
}


def feature_vector(evidence: dict[str, Any], names: tuple[str, ...] = FEATURES) -> np.ndarray:
    """The gate's input vector: the named features of :func:`gate_evidence`'s dict."""
    return np.array([float(_FEATURE_FNS[n](evidence)) for n in names], dtype=np.float64)


def gate_features(episode: Episode, names: tuple[str, ...] = FEATURES) -> np.ndarray:
    """The evidence after the global look, as the gate's input vector (order of ``names``)."""
    return feature_vector(gate_evidence(episode), names)


def look_action(mask: np.ndarray) -> int:
    """The action (index into :data:`ACTIONS`) that "look closer" takes: every allowed tool; 0 when none is."""
    allowed = np.flatnonzero(mask)
    return int(allowed[-1])


def action_mask(episode: Episode, tools: dict[str, Tool], policy: EmbeddedPolicy) -> np.ndarray:
    """Which actions this episode allows (the hand-set gate's hard constraints stay)."""
    weights = policy._weights(episode)
    positional = policy._positional(episode)
    zoom = positional and ZOOM in tools and weights[ZOOM] > 0
    compare = zoom and COMPARE in tools and weights[COMPARE] > 0 and episode.product.gate.aligned_informative
    return np.array([True, zoom, compare])


def action_calls(action: int, episode: Episode) -> list[ToolCall]:
    box = episode.look.hot_box.to_list()
    return {0: [], 1: [ToolCall(ZOOM, {"box": box})],
            2: [ToolCall(ZOOM, {"box": box}), ToolCall(COMPARE, {"box": box})]}[action]


@dataclass
class LearnedGate:
    """Softmax policy over ``actions`` (:data:`ACTIONS` or :data:`LOOK_ACTIONS`), linear in ``features``."""

    weights: np.ndarray  # (len(actions), len(features))
    meta: dict[str, Any] = field(default_factory=dict)
    actions: tuple[str, ...] = ACTIONS
    features: tuple[str, ...] = FEATURES

    @classmethod
    def zeros(cls, actions: tuple[str, ...] = ACTIONS, features: tuple[str, ...] = FEATURES) -> LearnedGate:
        return cls(np.zeros((len(actions), len(features))), actions=tuple(actions), features=tuple(features))

    @property
    def two_way(self) -> bool:
        return tuple(self.actions) == LOOK_ACTIONS

    def own_mask(self, mask: np.ndarray) -> np.ndarray:
        """An :data:`ACTIONS` mask as a mask over this gate's actions."""
        return np.array([True, bool(mask[1:].any())]) if self.two_way else mask

    def probabilities(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Over this gate's actions; ``mask`` over them too (see :meth:`own_mask`)."""
        logits = self.weights @ x
        logits = np.where(mask, logits, -np.inf)
        p = np.exp(logits - logits[mask].max())
        return p / p.sum()

    def decide(self, x: np.ndarray, mask: np.ndarray) -> int:
        """The most probable allowed action, as an index into :data:`ACTIONS` (``mask`` over :data:`ACTIONS`)."""
        a = int(np.argmax(self.probabilities(x, self.own_mask(mask))))
        return (look_action(mask) if a else 0) if self.two_way else a

    def choose(self, episode: Episode, tools: dict[str, Tool], policy: EmbeddedPolicy) -> int:
        """The most probable allowed action (index into :data:`ACTIONS`)."""
        return self.decide(gate_features(episode, self.features), action_mask(episode, tools, policy))

    def to_json(self) -> str:
        payload = {"format": "iad-learned-gate", "version": FORMAT_VERSION, "actions": list(self.actions),
                   "features": list(self.features), "weights": self.weights.round(6).tolist(), "meta": self.meta}
        return json.dumps(payload, indent=1)

    def save(self, path: str | Path) -> None:
        from iad_agent.imageio import atomic_write_text

        atomic_write_text(Path(path), self.to_json())

    def install(self, workspace: Any, product: str) -> Path:
        """Install in a registered product as a new version of it (``Workspace.install_file``: atomic, locked,
        carried into later versions); returns the version's folder."""
        return workspace.install_file(product, INSTALLED_NAME, self.to_json().encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> LearnedGate:
        """Raises ``ValueError`` naming the file when it is not a learned gate of this version."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: cannot read the learned gate ({exc})") from exc
        if not isinstance(data, dict) or data.get("format") != "iad-learned-gate":
            raise ValueError(f"{path}: not a learned gate file (written by `iad train gate`)")
        actions, features = data.get("actions"), data.get("features")
        if (actions not in (list(ACTIONS), list(LOOK_ACTIONS)) or not isinstance(features, list)
                or not features or not set(features) <= set(_FEATURE_FNS)):
            raise ValueError(f"{path}: learned gate for other actions/features {actions} / {features}; "
                             "retrain it with this version (`iad train gate`)")
        try:
            weights = np.asarray(data["weights"], dtype=np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path}: learned gate weights are missing or not numbers") from exc
        if weights.shape != (len(actions), len(features)) or not np.isfinite(weights).all():
            raise ValueError(f"{path}: learned gate weights have shape {weights.shape}, expected {(len(actions), len(features))}")
        return cls(weights, data.get("meta", {}), tuple(actions), tuple(features))


class ForcedGate:
    """Always the same action (the gate trainer runs every action once per image)."""

    def __init__(self, action: int) -> None:
        self.action = action

    def choose(self, episode: Episode, tools: dict[str, Tool], policy: EmbeddedPolicy) -> int:
        return self.action if action_mask(episode, tools, policy)[self.action] else 0


def installed_gate(product: Any, cache: dict) -> LearnedGate | None:
    """The gate installed in a registered product's folder, if any (cached per folder and file time)."""
    folder = getattr(product, "folder", None)
    path = Path(folder) / INSTALLED_NAME if folder else None
    if path is None or not path.exists():
        return None
    key = (str(path), path.stat().st_mtime_ns)
    if key not in cache:
        cache[key] = LearnedGate.load(path)
    return cache[key]


def gated_step(policy: EmbeddedPolicy, episode: Episode, tools: dict[str, Tool], gate: Any) -> Step:
    """The embedded policy's turn with a learned gate: decide once, after the global look, then answer."""
    look = episode.look
    if episode.trajectory.steps:
        return policy._finish(episode, tools, policy._evidence_text(episode))
    action = gate.choose(episode, tools, policy)
    thought = (f"Global look at {episode.product.name}: anomaly score {look.score:.3f} against threshold "
               f"{look.threshold:.3f} (ratio {look.ratio:.2f}); hottest region {look.hot_box.to_list(2)}.")
    calls = action_calls(action, episode)
    if not calls:
        return policy._finish(episode, tools, thought + " The learned gate expects no tool to pay here.")
    return Step(thought=thought + f" The learned gate chooses to look closer ({ACTIONS[action]}).", tool_calls=calls)

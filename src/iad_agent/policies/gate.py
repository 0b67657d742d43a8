"""A gate that learns (IndusAgent's gated RL): which tools the embedded policy calls, if any.

The hand-set gate calls the tools when the global score ratio lies in a fixed band. The
learned gate is a small stochastic policy: a softmax over the actions *answer now*, *zoom*
and *zoom + compare with the aligned good part*, linear in the evidence the policy already has
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
FEATURES = ("bias", "log_ratio", "abs_log_ratio", "near_boundary", "hot_area", "texture", "aligned")
INSTALLED_NAME = "learned_gate.json"
FORMAT_VERSION = 1


def gate_features(episode: Episode) -> np.ndarray:
    """The evidence after the global look, as the gate's input vector (order of :data:`FEATURES`)."""
    look, gate = episode.look, episode.product.gate
    lr = math.log(max(look.ratio, 1e-6))
    return np.array([1.0, lr, abs(lr), math.exp(-((lr / 0.25) ** 2)), min(look.hot_area * 10, 1.0),
                     float(gate.texture), float(gate.aligned_informative)], dtype=np.float64)


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
    """Softmax policy over :data:`ACTIONS`, linear in :data:`FEATURES`."""

    weights: np.ndarray  # (len(ACTIONS), len(FEATURES))
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def zeros(cls) -> LearnedGate:
        return cls(np.zeros((len(ACTIONS), len(FEATURES))))

    def probabilities(self, x: np.ndarray, mask: np.ndarray) -> np.ndarray:
        logits = self.weights @ x
        logits = np.where(mask, logits, -np.inf)
        p = np.exp(logits - logits[mask].max())
        return p / p.sum()

    def choose(self, episode: Episode, tools: dict[str, Tool], policy: EmbeddedPolicy) -> int:
        """The most probable allowed action."""
        return int(np.argmax(self.probabilities(gate_features(episode), action_mask(episode, tools, policy))))

    def to_json(self) -> str:
        payload = {"format": "iad-learned-gate", "version": FORMAT_VERSION, "actions": list(ACTIONS),
                   "features": list(FEATURES), "weights": self.weights.round(6).tolist(), "meta": self.meta}
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
        if data.get("actions") != list(ACTIONS) or data.get("features") != list(FEATURES):
            raise ValueError(f"{path}: learned gate for other actions/features {data.get('actions')} / {data.get('features')}; "
                             "retrain it with this version (`iad train gate`)")
        weights = np.asarray(data["weights"], dtype=np.float64)
        if weights.shape != (len(ACTIONS), len(FEATURES)) or not np.isfinite(weights).all():
            raise ValueError(f"{path}: learned gate weights have shape {weights.shape}, expected {(len(ACTIONS), len(FEATURES))}")
        return cls(weights, data.get("meta", {}))


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

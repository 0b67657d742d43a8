"""The learned gate (issue 13): learns when a tool pays, saves/loads, replaces the hand-set band."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iad_agent.policies.gate import ACTIONS, FEATURES, LearnedGate
from iad_agent.training.gate import GateTrainConfig, Outcome, greedy_actions, train


def _toy(n: int = 40) -> list[Outcome]:
    """Half the images are ambiguous (near the boundary): there zooming makes the answer right, elsewhere it only costs."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        ambiguous = i % 2 == 0
        log_ratio = rng.uniform(-0.1, 0.1) if ambiguous else rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2)
        x = np.array([1.0, log_ratio, abs(log_ratio), np.exp(-((log_ratio / 0.25) ** 2)), 0.1, 0.0, 1.0])
        right_without = not ambiguous
        acc = np.array([float(right_without), 1.0, 1.0, 0.0])
        calls = np.array([0.0, 1.0, 2.0, 0.0])
        out.append(Outcome("toy", int(i % 4 < 2), x, np.array([True, True, True]),
                           {"accuracy": acc, "gated_tool": -0.1 * calls, "behaviour": np.zeros(4)},
                           [None] * 4, [0, 1, 2, 0]))
    return out


def test_learns_to_call_the_tool_where_it_helps_and_not_elsewhere():
    outcomes = _toy()
    gate = train(outcomes, GateTrainConfig(epochs=300, weights={"accuracy": 1.0, "gated_tool": 1.0}))
    actions = greedy_actions(gate, outcomes)
    ambiguous = [a for i, a in enumerate(actions) if i % 2 == 0]
    clear = [a for i, a in enumerate(actions) if i % 2 == 1]
    assert all(a == ACTIONS.index("zoom") for a in ambiguous), ambiguous
    assert all(a == ACTIONS.index("none") for a in clear), clear


def test_save_load_and_refuse_other_files(tmp_path):
    gate = LearnedGate(np.arange(len(ACTIONS) * len(FEATURES), dtype=float).reshape(len(ACTIONS), -1) / 10, {"a": 1})
    gate.save(tmp_path / "g.json")
    again = LearnedGate.load(tmp_path / "g.json")
    assert np.allclose(again.weights, gate.weights) and again.meta == {"a": 1}
    (tmp_path / "bad.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="bad.json"):
        LearnedGate.load(tmp_path / "bad.json")


def test_installed_gate_replaces_the_hand_set_band(hazelnut_product, data_root, tmp_path):
    """A gate that always answers at once: no tool call, where the hand-set band would look closer."""
    from iad_agent.inspector import Inspector
    from iad_agent.policies.embedded import EmbeddedPolicy

    never = LearnedGate(np.zeros((len(ACTIONS), len(FEATURES))))
    never.weights[0, 0] = 10.0  # "none" always wins
    image = data_root / "mvtec_ad/hazelnut/test/crack/001.png"
    hand = Inspector(hazelnut_product, EmbeddedPolicy()).inspect(image).trajectory
    learned = Inspector(hazelnut_product, EmbeddedPolicy(gate=never)).inspect(image).trajectory
    assert learned.answer is not None and learned.stop_reason == "answer"
    assert not [c for c in learned.tool_calls if c.name != "prior_retriever"]
    always = LearnedGate(np.zeros((len(ACTIONS), len(FEATURES))))
    always.weights[2, 0] = 10.0  # "zoom+compare" always
    hazelnut_product.folder = tmp_path
    always.save(tmp_path / "learned_gate.json")
    try:
        installed = Inspector(hazelnut_product, EmbeddedPolicy()).inspect(image).trajectory
    finally:
        hazelnut_product.folder = None
    assert [c.name for c in installed.steps[0].tool_calls] == ["perceptive_zoomer", "comparative_retriever"]
    assert hand.answer is not None


def test_install_stores_the_gate_as_a_new_product_version_that_the_policy_uses(data_root, tmp_path):
    """`iad train gate --product NAME`: the gate lands in the version the workspace loads (and later ones)."""
    from iad_agent.inspector import Inspector
    from iad_agent.policies.embedded import EmbeddedPolicy
    from iad_agent.product import list_images
    from iad_agent.workspace import Workspace

    ws = Workspace(tmp_path / "ws")
    ws.register("hazelnut", list_images(data_root / "mvtec_ad/hazelnut/train/good")[:3])
    always = LearnedGate(np.zeros((len(ACTIONS), len(FEATURES))))
    always.weights[1, 0] = 10.0  # "zoom" always
    version = always.install(ws, "hazelnut")
    product = ws.load("hazelnut")
    assert (Path(version) / "learned_gate.json").exists() and (Path(product.folder) / "learned_gate.json").exists()
    image = data_root / "mvtec_ad/hazelnut/test/good/000.png"
    installed = Inspector(product, EmbeddedPolicy()).inspect(image).trajectory
    assert [c.name for c in installed.steps[0].tool_calls] == ["perceptive_zoomer"]

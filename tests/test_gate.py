"""The learned gate (issue 13): learns when a tool pays, saves/loads, replaces the hand-set band."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from iad_agent.policies.gate import ACTIONS, EXTRA_FEATURES, FEATURES, LOOK_ACTIONS, LearnedGate, feature_vector
from iad_agent.training.gate import GateTrainConfig, Outcome, greedy_actions, initial_gate, synthetic_material, train


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


def _evidence(ratio: float, w_zoom: float = 1.0, w_compare: float = 0.5) -> dict:
    return {"ratio": ratio, "hot_area": 0.01, "texture": False, "aligned": True, "w_zoom": w_zoom,
            "w_compare": w_compare, "band_low": 0.75, "band_high": 1.5}


def _toy_two_way(n: int = 40) -> list[Outcome]:
    """Zoom alone never helps; zoom + compare (every tool the product allows) helps on the ambiguous half."""
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        ambiguous = i % 2 == 0
        ratio = float(np.exp(rng.uniform(-0.08, 0.08) if ambiguous else rng.choice([-1.0, 1.0]) * rng.uniform(0.6, 1.2)))
        ev = _evidence(ratio)
        acc = np.array([float(not ambiguous), float(not ambiguous), 1.0, 0.0])
        calls = np.array([0.0, 1.0, 2.0, 0.0])
        out.append(Outcome("toy", int(i % 4 < 2), feature_vector(ev), np.array([True, True, True]),
                           {"accuracy": acc, "gated_tool": -0.1 * calls, "behaviour": np.zeros(4)},
                           [None] * 4, [0, 1, 2, 0], ev))
    return out


def test_two_way_gate_looks_with_every_allowed_tool_where_it_helps():
    outcomes = _toy_two_way()
    config = GateTrainConfig(epochs=300, two_way=True, features=FEATURES + EXTRA_FEATURES,
                             weights={"accuracy": 1.0, "gated_tool": 1.0})
    gate = train(outcomes, config)
    assert gate.actions == LOOK_ACTIONS and gate.features == FEATURES + EXTRA_FEATURES
    actions = greedy_actions(gate, outcomes)  # indices into ACTIONS: "look" = zoom + compare here
    assert [a for i, a in enumerate(actions) if i % 2 == 0] == [ACTIONS.index("zoom+compare")] * 20
    assert [a for i, a in enumerate(actions) if i % 2 == 1] == [0] * 20
    # where the product allows only the zoom, "look" is the zoom
    x = feature_vector(_evidence(1.0), gate.features)
    assert gate.decide(x, np.array([True, True, False])) == ACTIONS.index("zoom")
    assert gate.decide(x, np.array([True, False, False])) == 0


def test_without_std_scaling_it_still_learns_where_the_tool_helps():
    """Dr. GRPO's advantage (reward - group mean, no division by the std) on the same toy task."""
    outcomes = _toy()
    gate = train(outcomes, GateTrainConfig(epochs=300, scale_rewards=False, weights={"accuracy": 1.0, "gated_tool": 1.0}))
    actions = greedy_actions(gate, outcomes)
    assert [a for i, a in enumerate(actions) if i % 2 == 0] == [ACTIONS.index("zoom")] * 20
    assert [a for i, a in enumerate(actions) if i % 2 == 1] == [0] * 20


def test_band_prior_starts_as_the_hand_set_band():
    gate = initial_gate(GateTrainConfig(two_way=True, features=FEATURES + EXTRA_FEATURES, band_prior=True))
    allowed = np.array([True, True, True])
    for ratio, looks in [(0.5, False), (0.8, True), (1.0, True), (1.4, True), (2.0, False)]:
        assert (gate.decide(feature_vector(_evidence(ratio), gate.features), allowed) > 0) == looks, ratio
    with pytest.raises(ValueError, match="band_prior"):
        initial_gate(GateTrainConfig(band_prior=True))


def test_tool_reach_is_the_boundary_distance_in_units_of_what_the_tools_can_move():
    x = dict(zip(FEATURES + EXTRA_FEATURES, feature_vector(_evidence(1.2, 1.0, 0.0), FEATURES + EXTRA_FEATURES)))
    assert x["tool_reach"] == pytest.approx(np.log(1.2) * 2.0) and x["in_band"] == 1.0
    assert feature_vector(_evidence(1.2, 0.0, 0.0), ("tool_reach",))[0] == 5.0  # no tool: far out of reach


def test_synthetic_material_uses_unregistered_good_images(data_root):
    from iad_agent.product import list_images

    pool = list_images(data_root / "mvtec_ad/hazelnut/train/good")[:12]
    refs = pool[:4]
    material = synthetic_material("hazelnut", pool, refs, GateTrainConfig(synthetic_good=3, synthetic_defects=2))
    good = [s for s, make in material if make is None]
    defects = [(s, make) for s, make in material if make is not None]
    assert len(good) == 3 and len(defects) == 2 and all(s.label == 0 and s.image_path not in refs for s in good)
    assert all(s.label == 1 and s.split == "synthetic" for s, _ in defects)
    image = defects[0][1]()
    assert image.size[0] > 0
    assert synthetic_material("hazelnut", pool, refs, GateTrainConfig()) == []


def test_save_load_and_refuse_other_files(tmp_path):
    gate = LearnedGate(np.arange(len(ACTIONS) * len(FEATURES), dtype=float).reshape(len(ACTIONS), -1) / 10, {"a": 1})
    gate.save(tmp_path / "g.json")
    again = LearnedGate.load(tmp_path / "g.json")
    assert np.allclose(again.weights, gate.weights) and again.meta == {"a": 1}
    two = LearnedGate.zeros(LOOK_ACTIONS, FEATURES + EXTRA_FEATURES)
    two.save(tmp_path / "two.json")
    again = LearnedGate.load(tmp_path / "two.json")
    assert again.actions == LOOK_ACTIONS and again.features == FEATURES + EXTRA_FEATURES
    (tmp_path / "odd.json").write_text(two.to_json().replace('"tool_reach"', '"mystery"'))
    with pytest.raises(ValueError, match="odd.json"):
        LearnedGate.load(tmp_path / "odd.json")
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


def test_install_stores_the_gate_as_a_new_product_version_that_the_policy_uses(data_root, tmp_path, hazelnut3_copy):
    """`iad train gate --product NAME`: the gate lands in the version the workspace loads (and later ones)."""
    from iad_agent.inspector import Inspector
    from iad_agent.policies.embedded import EmbeddedPolicy
    from iad_agent.workspace import Workspace

    ws = Workspace(hazelnut3_copy(tmp_path / "ws"))  # hazelnut from 3 good images
    always = LearnedGate(np.zeros((len(ACTIONS), len(FEATURES))))
    always.weights[1, 0] = 10.0  # "zoom" always
    version = always.install(ws, "hazelnut")
    product = ws.load("hazelnut")
    assert (Path(version) / "learned_gate.json").exists() and (Path(product.folder) / "learned_gate.json").exists()
    from iad_agent.policies.embedded import HAND_SET_WEIGHTS, ZOOM

    product.gate.w_zoom = HAND_SET_WEIGHTS[ZOOM]  # the zoom allowed whatever this product's weight fit chose (0: never called)
    image = data_root / "mvtec_ad/hazelnut/test/good/000.png"
    installed = Inspector(product, EmbeddedPolicy()).inspect(image).trajectory
    assert [c.name for c in installed.steps[0].tool_calls] == ["perceptive_zoomer"]


@pytest.mark.slow
def test_cli_trains_a_two_way_gate_with_synthetic_material(data_root, tmp_path):
    """`iad train gate --two-way --band-prior --synthetic N`: real rollouts on a few hazelnut images, a loadable file."""
    import json

    from typer.testing import CliRunner

    from iad_agent.cli import app

    out = tmp_path / "gate.json"
    r = CliRunner().invoke(app, ["train", "gate", "--dataset", "mvtec", "--root", str(data_root / "mvtec_ad"),
                                 "--train-categories", "hazelnut", "--shots", "4", "--max-per-category", "2",
                                 "--epochs", "5", "--two-way", "--band-prior", "--synthetic", "2", "--out", str(out)])
    assert r.exit_code == 0, r.output
    gate = LearnedGate.load(out)
    assert gate.actions == LOOK_ACTIONS and gate.features == FEATURES + EXTRA_FEATURES
    assert gate.meta["n_images"] == 2 + 1 + 2  # labelled, unregistered good, synthetic defects
    report = json.loads(r.stdout[r.stdout.index("{"): r.stdout.rindex("}") + 1])
    assert report["train"]["n_images"] == 5

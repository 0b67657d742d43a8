"""Trajectory datasets built from the real shared images with the real tools (issue 5)."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import pytest

from iad_agent.agent.protocol import parse_model_output
from iad_agent.datasets import load_dataset
from iad_agent.trajectories import BuildConfig, STYLES, Split, build, build_trajectory, make_split, parse_style_weights
from iad_agent.trajectories.builder import BuildResult, BuiltTrajectory, assign_styles, inference_tools, select_samples
from iad_agent.trajectories.export import save, to_record
from iad_agent.trajectories.reasoner import VLMReasoner
from iad_agent.types import Box

ZOOM = "perceptive_zoomer"


@pytest.fixture(scope="module")
def hazelnut_samples(data_root):
    return load_dataset("mvtec", data_root / "mvtec_ad", "hazelnut", "test")


@pytest.fixture(scope="module")
def built(hazelnut_product, hazelnut_samples):
    """One anomalous sample per defect type and both good test images, styles in turn."""
    picks = [s for s in hazelnut_samples if s.image_path.stem == "000"] + [s for s in hazelnut_samples if s.defect_type is None]
    picks = list(dict.fromkeys(picks))
    tools = inference_tools()
    items = []
    for i, sample in enumerate(picks):
        style = STYLES[i % len(STYLES)]
        traj = build_trajectory(hazelnut_product, sample, style, tools, seed=i)
        items.append(BuiltTrajectory(traj, sample, style, "train" if i % 3 else "test", f"{i}#{style}"))
    return items


def _zoom_boxes(item: BuiltTrajectory) -> list[Box]:
    return [Box.from_list(obs.data["box"]) for step in item.trajectory.steps
            for call, obs in zip(step.tool_calls, step.observations) if call.name == ZOOM]


def test_zoom_boxes_of_anomalous_samples_cover_the_ground_truth(built):
    anomalous = [b for b in built if b.sample.is_anomalous]
    assert len(anomalous) == 4
    for item in anomalous:
        truth = item.sample.ground_truth_box()
        zooms = _zoom_boxes(item)
        assert zooms, item.id
        for zoom in zooms:
            inter = Box(max(zoom.x1, truth.x1), max(zoom.y1, truth.y1), min(zoom.x2, truth.x2), min(zoom.y2, truth.y2))
            assert zoom.iou(truth) > 0.3, (item.id, zoom, truth)
            assert inter.area / truth.area > 0.8, (item.id, zoom, truth)
        answer = item.trajectory.answer
        assert answer.anomaly_present is True
        assert answer.defect_type == item.sample.defect_type
        assert answer.box.iou(truth) > 0.99


def test_normal_samples_zoom_on_the_hot_spot_and_clear_it(built):
    normals = [b for b in built if not b.sample.is_anomalous]
    assert len(normals) == 2
    for item in normals:
        first = item.trajectory.steps[0].tool_calls
        zoom = next(c for c in first if c.name == ZOOM)
        assert zoom.arguments["box"] == pytest.approx(item.trajectory.evidence["hot_box"], abs=1e-4)
        answer = item.trajectory.answer
        assert answer.anomaly_present is False and answer.box is None and answer.defect_type is None


def test_styles_call_their_tools(built):
    for item in built:
        names = [c.name for c in item.trajectory.tool_calls]
        assert item.trajectory.stop_reason == "answer"
        if item.style == "perceptive":
            assert names == [ZOOM]
        elif item.style == "comparative":
            assert names == [ZOOM, "comparative_retriever"]
        else:
            assert names[:2] == ["prior_retriever", ZOOM] and set(names[2:]) <= {"high_frequency_enhancer"}
        assert all(obs.ok for step in item.trajectory.steps for obs in step.observations)


def test_every_trajectory_renders_and_reparses(built, tmp_path):
    tools = inference_tools()
    for item in built:
        record = to_record(item, tmp_path)
        placeholders = sum(p["type"] == "image" for m in record["messages"] for p in m["content"])
        assert placeholders == len(record["images"]) >= 2
        steps = item.trajectory.steps
        turns = [m for m in record["messages"] if m["role"] == "assistant"]
        assert len(turns) == len(steps)
        for message, step in zip(turns, steps):
            (part,) = message["content"]
            parsed = parse_model_output(part["text"], tools)
            assert parsed.well_formed, (item.id, parsed.errors, parsed.repairs)
            assert parsed.thought == step.thought
            assert [c.to_dict() for c in parsed.tool_calls] == [c.to_dict() for c in step.tool_calls]
            if step.answer is None:
                assert parsed.answer is None
            else:
                assert parsed.answer.anomaly_present == step.answer.anomaly_present
                assert parsed.answer.defect_type == step.answer.defect_type
                assert (parsed.answer.box is None) == (step.answer.box is None)
                if step.answer.box is not None:
                    assert parsed.answer.box.to_list() == step.answer.box.to_list()


def test_export_loads_with_datasets_and_saves_each_image_once(built, hazelnut_samples, data_root, tmp_path):
    from datasets import load_from_disk

    split = make_split(hazelnut_samples, "mvtec", data_root / "mvtec_ad", ["hazelnut"], test_fraction=0.0)
    result = BuildResult(built + [built[0]], split, BuildConfig(root=str(data_root / "mvtec_ad")))  # one row twice
    counts = save(result, tmp_path, command="iad trajectories build ...")
    assert counts == {"train": sum(b.split == "train" for b in built) + (built[0].split == "train"),
                      "test": sum(b.split == "test" for b in built) + (built[0].split == "test")}
    data = load_from_disk(str(tmp_path))
    assert set(data) == {"train", "test"}
    row = data["train"][0]
    assert {"messages", "images"} <= set(row)
    assert row["images"][0].size == (256, 256)
    assert sum(p["type"] == "image" for m in row["messages"] for p in m["content"]) == len(row["images"])
    files = list((tmp_path / "images").iterdir())
    references = {p for r in json.loads((tmp_path / "sharegpt_train.json").read_text()) for p in r["images"]}
    references |= {p for r in json.loads((tmp_path / "sharegpt_test.json").read_text()) for p in r["images"]}
    assert len(files) == len(references)  # the duplicated row added no file
    assert all((tmp_path / p).exists() for p in references)
    first = json.loads((tmp_path / "sharegpt_train.json").read_text())[0]
    assert first["system"] and first["conversations"][0]["from"] == "human"
    assert sum(t["value"].count("<image>") for t in first["conversations"]) == len(first["images"])
    assert json.loads((tmp_path / "dataset_info.json").read_text())["iad_trajectories_train"]["formatting"] == "sharegpt"
    card = (tmp_path / "README.md").read_text()
    assert "| hazelnut |" in card and "comparative" in card
    assert Split.load(tmp_path / "split.json") == split


def test_category_split_holds_no_leakage(data_root, tmp_path):
    root = data_root / "mvtec_ad"
    samples = load_dataset("mvtec", root)
    split = make_split(samples, "mvtec", root, ["hazelnut", "grid"], test_fraction=0.2, seed=1, normals_per_category=5)
    assert split.held_out_categories == ["bottle", "transistor"]
    assert set(split.train) == set(split.test) == set(split.bank) == {"hazelnut", "grid"}
    assert set(split.held_out) == {"bottle", "transistor"}
    parts = [set(p for paths in getattr(split, part).values() for p in paths) for part in ("bank", "train", "test", "held_out")]
    for i in range(len(parts)):
        for j in range(i + 1, len(parts)):
            assert not parts[i] & parts[j]
    for s in samples:
        part = split.part_of(s)
        assert part is not None
        assert (part == "held_out") == (s.category in ("bottle", "transistor"))
    assert all(len(v) == 5 for v in split.bank.values())
    assert all(not s.is_anomalous for s in samples if split.part_of(s) == "bank")
    split.save(tmp_path / "split.json")
    assert Split.load(tmp_path / "split.json") == split
    leaked = copy.deepcopy(split)
    leaked.train["hazelnut"].append(split.held_out["transistor"][0])
    with pytest.raises(ValueError, match="both"):
        leaked.check()
    with pytest.raises(ValueError, match="both trained on and held out"):
        make_split(samples, "mvtec", root, ["hazelnut"], ["hazelnut"])


def test_builder_runs_the_whole_pipeline(hazelnut_product, data_root):
    config = BuildConfig(dataset="mvtec", root=str(data_root / "mvtec_ad"), train_categories=["hazelnut"],
                         held_out_categories=[], styles=parse_style_weights("perceptive"), max_per_category=2,
                         normal_fraction=0.5, test_fraction=0.25)
    calls = []
    result = build(config, products={"hazelnut": hazelnut_product}, progress=lambda d, t, w: calls.append((d, t)))
    assert {b.split for b in result.trajectories} == {"train", "test"}
    assert all(b.style == "perceptive" for b in result.trajectories)
    for b in result.trajectories:
        assert result.split.part_of(b.sample) == b.split
    train = [b for b in result.trajectories if b.split == "train"]
    assert len(train) == 2 and sorted(b.sample.label for b in train) == [0, 1]
    assert calls[-1][0] == calls[-1][1]


def test_selection_and_style_mix():
    rng = random.Random(0)
    assert sorted(assign_styles(6, {"perceptive": 1, "comparative": 2}, rng)) == ["comparative"] * 4 + ["perceptive"] * 2
    with pytest.raises(ValueError, match="unknown trajectory style"):
        parse_style_weights("zoom-only")

    class S:
        def __init__(self, i, label):
            self.image_path, self.label = Path(f"{i}.png"), label

        @property
        def is_anomalous(self):
            return self.label == 1

    pool = [S(i, 1) for i in range(8)] + [S(i + 8, 0) for i in range(2)]
    chosen = select_samples(pool, 0.5, None, rng)
    assert sum(s.is_anomalous for s in chosen) == 2 and len(chosen) == 4
    assert len(select_samples(pool, None, 3, rng)) == 3


class _FakeClient:
    """An OpenAI-style client whose teacher replies with a fixed text."""

    def __init__(self, reply: str) -> None:
        self.reply, self.requests = reply, []
        self.chat = self
        self.completions = self

    def create(self, **kwargs):
        self.requests.append(kwargs)
        message = type("M", (), {"content": self.reply})
        return type("R", (), {"choices": [type("C", (), {"message": message})]})


def test_teacher_vlm_text_is_kept_only_when_it_agrees_with_the_ground_truth(built):
    item = next(b for b in built if b.sample.is_anomalous)
    n = len(item.trajectory.steps)
    good = {"anomaly_present": True, "defect_type": item.sample.defect_type.upper(),
            "thoughts": [f"thought {i}" for i in range(n)], "reason": "A visible defect."}
    traj = copy.deepcopy(item.trajectory)
    client = _FakeClient("Sure:\n" + json.dumps(good))
    assert VLMReasoner("teacher", client=client).rewrite(traj, item.sample, {})
    assert [s.thought for s in traj.steps] == good["thoughts"] and traj.answer.reason == "A visible defect."
    content = client.requests[0]["messages"][1]["content"]
    assert content[0]["image_url"]["url"].startswith("data:image/png;base64,")
    for bad in ({**good, "anomaly_present": False}, {**good, "defect_type": "scratch"}, {**good, "thoughts": ["only one"]},
                {**good, "thoughts": ["<tool_call>x</tool_call>"] * n}):
        traj = copy.deepcopy(item.trajectory)
        assert not VLMReasoner("teacher", client=_FakeClient(json.dumps(bad))).rewrite(traj, item.sample, {})
        assert [s.thought for s in traj.steps] == [s.thought for s in item.trajectory.steps]

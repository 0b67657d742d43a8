"""RL prompt datasets (issue 13): prompt = what the hf policy sees, ground truth, SFT split, MMAD file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from iad_agent.trajectories import BuildConfig
from iad_agent.trajectories.rl_prompts import build_from_dataset, build_from_mmad, load_split_file


@pytest.fixture(scope="module")
def rl_data(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("rl")
    config = BuildConfig(dataset="mvtec", root=str(data_root / "mvtec_ad"), train_categories=["hazelnut"],
                         held_out_categories=["transistor"], max_per_category=3)
    counts = build_from_dataset(config, out)
    return out, counts


def test_rows_hold_prompt_images_and_ground_truth(rl_data):
    from datasets import load_from_disk

    out, counts = rl_data
    data = load_from_disk(str(out))
    assert set(data) == {"train", "test", "held_out"} and counts["train"] == 3
    for part in data.values():
        for row in part:
            assert len(row["images"]) == 1 and max(row["images"][0].size) <= 768
            assert row["source_image"] not in row["bank"] and len(row["bank"]) == 10
            if row["label"] == 1:
                assert row["defect_type"] and len(row["box"]) == 4
            else:
                assert row["defect_type"] is None and row["box"] is None
    assert {r["category"] for r in data["held_out"]} == {"transistor"}
    split = load_split_file(out / "split.json")
    assert split.train_categories == ["hazelnut"] and split.held_out_categories == ["transistor"]


def test_prompt_is_what_the_hf_policy_renders(rl_data, hazelnut_product):
    """The prompt column equals Inspector.episode's conversation with the VLM tool set (image as placeholder)."""
    from datasets import load_from_disk

    from iad_agent.inspector import Inspector
    from iad_agent.trajectories.builder import inference_tools

    out, _ = rl_data
    row = load_from_disk(str(out))["train"][0]
    episode, _ = Inspector(hazelnut_product, tools=inference_tools()).episode(row["source_image"])
    expected = [{"role": m["role"], "content": [{"type": "image", "text": None} if p["type"] == "image" else p for p in m["content"]]}
                for m in episode.trajectory.to_messages()]
    assert row["prompt"] == expected


def test_split_of_the_sft_data_is_reused(rl_data, data_root, tmp_path):
    out, _ = rl_data
    config = BuildConfig(dataset="mvtec", root=str(data_root / "mvtec_ad"), max_per_category=2)
    build_from_dataset(config, tmp_path, split=load_split_file(out / "split.json"))
    assert json.loads((tmp_path / "split.json").read_text()) == json.loads((out / "split.json").read_text())


def test_mmad_question_file(data_root, tmp_path):
    """A file in MMAD's schema (generated from hazelnut, as the official one is not available here)."""
    from datasets import load_from_disk

    from iad_agent.datasets import load_dataset
    from iad_agent.eval.mmad import generate_questions

    root = data_root / "mvtec_ad"
    samples = [s for s in load_dataset("mvtec", root, "hazelnut", "test") if s.image_path.stem in ("000", "001")]
    pool = sorted((root / "hazelnut/train/good").glob("*.png"))[:4]
    questions = generate_questions([(pool, samples)], key_root=data_root)
    (tmp_path / "mmad.json").write_text(json.dumps(questions))
    counts = build_from_mmad(tmp_path / "mmad.json", data_root, tmp_path / "out", test_fraction=0.0)
    rows = list(load_from_disk(str(tmp_path / "out"))["train"])
    assert counts["train"] == len(samples) == len(rows)
    by_path = {Path(r["source_image"]).resolve(): r for r in rows}
    for s in samples:
        row = by_path[Path(s.image_path).resolve()]
        assert row["label"] == s.label and row["defect_type"] == s.defect_type
        assert (row["box"] is not None) == s.is_anomalous and len(row["bank"]) == 1
    with pytest.raises(ValueError, match="not found"):
        (tmp_path / "bad.json").write_text(json.dumps({"x/y/z.png": next(iter(questions.values()))}))
        build_from_mmad(tmp_path / "bad.json", data_root, tmp_path / "bad")

"""Zero-shot inspection of a batch (`iad inspect DIR --zero-shot`, `iad eval --shots 0`) on real hazelnut images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from iad_agent.cli import app
from iad_agent.eval import plan
from iad_agent.zeroshot import ZeroShotError, inspect_paths, label_free_threshold

runner = CliRunner()


@pytest.fixture(scope="module")
def batch_folder(tmp_path_factory, data_root):
    """A batch of one product, no good image known: 6 good hazelnuts and 4 defective ones (crack, hole, print, cut)."""
    hazelnut = data_root / "mvtec_ad/hazelnut"
    goods = sorted((hazelnut / "train/good").glob("*.png"))[:32:8] + sorted((hazelnut / "test/good").glob("*.png"))
    bads = [hazelnut / f"test/{d}/000.png" for d in ("crack", "hole", "print", "cut")]
    folder = tmp_path_factory.mktemp("line")
    for i, p in enumerate(goods):
        shutil.copy(p, folder / f"good_{i}.png")
    for p in bads:
        if p.exists():
            shutil.copy(p, folder / f"bad_{p.parent.name}.png")
    return folder


@pytest.fixture(scope="module")
def outcomes(batch_folder):
    return inspect_paths(sorted(batch_folder.glob("*.png")), "hazelnut")


def test_defective_images_score_above_good_ones_without_any_good_reference(outcomes):
    assert all(o.ok for o in outcomes)
    bad = [o.result.score for o in outcomes if "bad_" in o.image]
    good = [o.result.score for o in outcomes if "good_" in o.image]
    assert len(bad) >= 3 and len(good) >= 5
    assert np.mean(bad) > np.mean(good)
    assert sum(b > g for b in bad for g in good) / (len(bad) * len(good)) >= 0.75  # image AUROC of the batch
    flagged = [o.image for o in outcomes if o.result.anomaly_present]
    assert any("bad_" in f for f in flagged)
    d = outcomes[0].result.to_dict()
    assert d["policy"] == "zero-shot" and d["threshold"] == round(outcomes[0].result.threshold, 6)
    assert (d["box"] is None) == (not d["anomaly_present"])


def test_label_free_threshold_ignores_the_defective_half():
    scores = [1.0, 1.02, 0.98, 1.01, 3.0, 4.0, 5.0, 6.0]  # most of the batch defective
    t = label_free_threshold(scores, 1.0)
    assert 1.0 < t < 1.2


def test_a_batch_of_two_is_refused(batch_folder, tmp_path):
    with pytest.raises(ZeroShotError, match="at least 3"):
        inspect_paths(sorted(batch_folder.glob("*.png"))[:2], "hazelnut")
    small = tmp_path / "two"
    small.mkdir()
    for p in sorted(batch_folder.glob("*.png"))[:2]:
        shutil.copy(p, small / p.name)
    r = runner.invoke(app, ["inspect", str(small), "--zero-shot", "--out-dir", str(tmp_path / "o")])
    assert r.exit_code == 2 and "at least 3" in r.output


def test_zero_shot_cli_writes_one_line_per_image_and_exits_1(batch_folder, tmp_path):
    jsonl, out_dir = tmp_path / "r.jsonl", tmp_path / "maps"
    (batch_folder / "broken.png").write_bytes(b"not an image")
    try:
        r = runner.invoke(app, ["inspect", str(batch_folder), "--zero-shot", "--product-name", "hazelnut",
                                "--jsonl", str(jsonl), "--out", str(tmp_path / "r.csv"), "--out-dir", str(out_dir)])
    finally:
        (batch_folder / "broken.png").unlink()
    assert r.exit_code == 1, r.output  # defects found
    lines = [json.loads(x) for x in jsonl.read_text().splitlines()]
    assert len(lines) == 11
    broken = [x for x in lines if x["image"].endswith("broken.png")]
    assert len(broken) == 1 and broken[0]["error"]
    answers = [x for x in lines if "error" not in x]
    assert {x["product"] for x in answers} == {"hazelnut"} and all(x["policy"] == "zero-shot" for x in answers)
    assert all(x["heatmap"] and (out_dir / x["heatmap"].split("/")[-1]).exists() for x in answers)
    assert len((tmp_path / "r.csv").read_text().splitlines()) == 12  # header + 11 rows
    # a second run without --resume refuses to overwrite; a bad combination is a usage error
    r = runner.invoke(app, ["inspect", str(batch_folder), "--zero-shot", "--jsonl", str(jsonl)])
    assert r.exit_code == 2 and "already exists" in r.output
    r = runner.invoke(app, ["inspect", str(batch_folder), "--zero-shot", "--product", "hazelnut"])
    assert r.exit_code == 2 and "neither --product" in r.output


def test_zero_shot_cli_exits_0_when_nothing_stands_out(data_root, tmp_path):
    folder = tmp_path / "goods"
    folder.mkdir()
    for p in sorted((data_root / "mvtec_ad/hazelnut/train/good").glob("*.png"))[:3]:
        shutil.copy(p, folder / p.name)
    r = runner.invoke(app, ["inspect", str(folder), "--zero-shot", "--json", "--out-dir", str(tmp_path / "o")])
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 3
    assert r.exit_code == (1 if any(x["anomaly_present"] for x in lines) else 0)


def test_eval_shots_0_yields_zero_shot_records_beside_k_shot_ones(data_root, tmp_path):
    config = plan.EvalConfig(datasets=[("mvtec", data_root / "mvtec_ad")], categories=["hazelnut"], shots=[0, 1],
                             policies=["knn", "zero-shot", "zero-shot-mutual"], examples=False)
    groups = plan.plan(config)
    zero = [g for g in groups if g.shots == 0]
    assert len(zero) == 1 and zero[0].policies == ["zero-shot", "zero-shot-mutual"] and not zero[0].references
    assert [g.policies for g in groups if g.shots == 1] == [["knn"]]
    r = runner.invoke(app, ["eval", "--dataset", "mvtec", "--category", "hazelnut", "--shots", "0",
                            "--policy", "zero-shot", "--policy", "zero-shot-mutual", "--policy", "zero-shot-no-clip",
                            "--out", str(tmp_path / "ev")])
    assert r.exit_code == 0, r.output
    records = {x["policy"]: x for x in map(json.loads, (tmp_path / "ev/records.jsonl").read_text().splitlines())}
    assert sorted(records) == ["zero-shot", "zero-shot-mutual", "zero-shot-no-clip"]
    for rec in records.values():
        assert rec["shots"] == 0 and rec["protocol"] == "batch" and rec["n_test"] == 10
        assert rec["image_auroc"] is not None and rec["balanced_accuracy"] is not None
        assert rec["pixel_auroc"] is not None and rec["box_hit_rate"] is not None
    # the ablation scores the same batch without the length cap: its own maps, its own cost
    assert records["zero-shot"]["zero_shot"]["clip_quantile"] == 0.75
    assert records["zero-shot-no-clip"]["zero_shot"]["clip_quantile"] == 0.0
    assert records["zero-shot-no-clip"]["zero_shot"]["self_weight"] == records["zero-shot"]["zero_shot"]["self_weight"]
    scores = {p: [x["score"] for x in rec["samples"]] for p, rec in records.items()}
    assert scores["zero-shot"] != scores["zero-shot-no-clip"]
    metrics = json.loads((tmp_path / "ev/metrics.json").read_text())
    assert {s["policy"] for s in metrics["summary"] if str(s["shots"]) == "0"} == set(records)


def test_big_batches_compare_each_image_with_a_bounded_number_of_others():
    from iad_agent.vision.similarity import mutual_pairs, mutual_scores

    pairs = mutual_pairs(200, 8, seed=0)
    partners = np.bincount(np.array(pairs).ravel(), minlength=200)
    assert len(pairs) <= 200 * 4 and partners.min() >= 4 and partners.max() <= 20  # linear in the batch, not quadratic
    rng = np.random.default_rng(0)
    grids = [rng.normal(size=(4, 5, 3)).astype(np.float32) for _ in range(12)]
    grids[3][1, 2] += 50  # one far-off patch
    maps = mutual_scores(grids, max_refs=4)
    assert len(maps) == 12 and maps[3].shape == (4, 5)
    assert np.unravel_index(np.argmax(maps[3]), (4, 5)) == (1, 2)


def test_the_batch_caps_its_patch_lengths_so_a_harder_lit_image_does_not_outscore_a_defect():
    import dataclasses

    from iad_agent.vision.features import CLIP_QUANTILE
    from iad_agent.zeroshot import ZeroShotSettings, batch_maps

    assert ZeroShotSettings().clip_quantile == CLIP_QUANTILE  # the batch caps as a registered product does
    rng = np.random.default_rng(0)
    protos = rng.normal(size=(6, 16)).astype(np.float32)  # a texture of six kinds of patch

    def image() -> np.ndarray:
        return (protos[rng.integers(0, 6, size=(8, 8))] + 0.1 * rng.normal(size=(8, 8, 16))).astype(np.float32)

    grids = [image() for _ in range(12)]
    grids[3] = grids[3] * 2.5  # a good part lit harder: every patch longer, none different in kind
    defect = rng.normal(size=16).astype(np.float32)
    grids[7][4, 4] = defect * np.linalg.norm(protos, axis=1).mean() / np.linalg.norm(defect)  # one patch of a new kind

    def peaks(settings: ZeroShotSettings) -> list[float]:
        return [float(m.max()) for m in batch_maps(grids, settings, need_self=False).mutual]

    uncapped, capped = peaks(dataclasses.replace(ZeroShotSettings(), clip_quantile=0.0)), peaks(ZeroShotSettings())
    assert int(np.argmax(uncapped)) == 3  # without the cap the lit image stands out most
    assert int(np.argmax(capped)) == 7 and capped[7] > 2 * capped[3]
    with pytest.raises(ValueError, match="clip_quantile"):
        ZeroShotSettings(clip_quantile=1.5)


# ------------------------------------------------------------------ brightness matching of the batch


@pytest.fixture(scope="module")
def tile_folder(tmp_path_factory, data_root):
    """Six good magnetic tiles shot under different light (luminance means about 55 to 180), sizes differing."""
    folder = tmp_path_factory.mktemp("tiles")
    for p in sorted((data_root / "magnetic_tile/MT_Free/Imgs").glob("*.jpg"))[::25][:6]:
        shutil.copy(p, folder / p.name)
    return folder


def test_a_batch_whose_light_varies_is_matched_to_its_median_brightness(tile_folder, tmp_path):
    from iad_agent.imageio import load_image
    from iad_agent.vision.brightness import luminance_stats, target_from_stats

    tiles = sorted(tile_folder.glob("*.jpg"))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    phases = []
    matched = inspect_paths([*tiles[:3], broken, *tiles[3:]], "tile", progress=lambda ph, d, t: phases.append(ph))
    assert phases[0] == "light" and phases.index("features") == 7  # a first pass over all 7 files, then the features
    assert matched[3].error and not matched[3].ok  # an unreadable image still gets its error, and is left out
    answers = [o.result for o in matched if o.ok]
    assert len(answers) == 6 and all(r.batch_size == 6 for r in answers)
    target = target_from_stats([luminance_stats(load_image(p)) for p in tiles])
    assert target is not None and all(r.brightness == target for r in answers)
    assert answers[0].to_dict()["trace"]["brightness"] == list(target)
    kept = inspect_paths(tiles, "tile", match_brightness=False)
    assert all(o.ok and o.result.brightness is None for o in kept)
    assert "brightness" not in kept[0].result.to_dict()["trace"]
    assert [o.result.score for o in kept] != [r.score for r in answers]


def test_a_batch_of_stable_light_is_left_as_it_is(outcomes):
    # hazelnuts keep their brightness, defective ones included (coefficient of variation about 0.06)
    assert all(o.result.brightness is None for o in outcomes)
    assert "brightness" not in outcomes[0].result.to_dict()["trace"]


def test_zero_shot_cli_says_when_it_matches_brightness_and_keep_brightness_turns_it_off(tile_folder, tmp_path):
    r = runner.invoke(app, ["inspect", str(tile_folder), "--zero-shot", "--json", "--out-dir", str(tmp_path / "a")])
    assert r.exit_code in (0, 1), r.output
    assert "brightness: matched to mean" in r.stderr and "light varies" in r.stderr
    lines = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert len(lines) == 6 and all(len(x["trace"]["brightness"]) == 2 for x in lines)
    r = runner.invoke(app, ["inspect", str(tile_folder), "--zero-shot", "--json", "--keep-brightness",
                            "--out-dir", str(tmp_path / "b")])
    assert r.exit_code in (0, 1), r.output
    assert "brightness:" not in r.stderr
    assert all("brightness" not in json.loads(x)["trace"] for x in r.stdout.splitlines() if x.startswith("{"))
    r = runner.invoke(app, ["inspect", str(tile_folder), "--normals", str(tile_folder), "--keep-brightness"])
    assert r.exit_code == 2 and "--zero-shot" in r.output

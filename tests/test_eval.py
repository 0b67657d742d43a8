"""Tests for the benchmark (iad_agent.eval plan / runner / records / report, `iad eval`), the knn policy and resume."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iad_agent.cli import app
from iad_agent.eval import aggregate, plan, report
from iad_agent.eval import runner as eval_runner
from iad_agent.eval import records as recordfile
from iad_agent.types import ANOMALOUS, NORMAL, FinalAnswer, Sample

runner = CliRunner()

REQUIRED_KEYS = {
    "dataset", "category", "shots", "seed", "policy", "image_auroc", "image_ap", "f1", "balanced_accuracy",
    "pixel_auroc", "aupro", "box_iou", "box_hit_rate", "defect_type_accuracy", "tool_calls_per_image",
    "ms_per_image_p50", "ms_per_image_p95", "peak_rss_mb", "n_normal", "n_anomalous", "oracle_f1",
}


# ----------------------------------------------------------------------------- knn policy


def test_knn_policy_answers_from_the_global_look_without_tools(data_root, hazelnut_product):
    from iad_agent.inspector import Inspector
    from iad_agent.policies import make_policy

    policy = make_policy("knn")
    assert policy.name == "knn"
    inspector = Inspector(hazelnut_product, policy, {})
    for name in ("test/crack/000.png", "test/good/000.png"):
        result = inspector.inspect(data_root / "mvtec_ad/hazelnut" / name)
        look, answer = result.episode.look.plain, result.trajectory.answer  # the plain nearest-neighbour look
        assert result.trajectory.tool_calls == []
        assert len(result.trajectory.steps) == 1
        assert answer.score == look.score and answer.threshold == look.threshold
        assert answer.anomaly_present == (look.score > look.threshold)
        assert (answer.box == look.answer_box) if answer.anomaly_present else answer.box is None


# ----------------------------------------------------------------------------- policies and splits


def test_ablation_names_map_to_disabled_tools():
    from iad_agent.policies import PolicyConfigError, policy_label, resolve_policy

    r = resolve_policy("embedded-no-zoom")
    assert r.disabled == ("perceptive_zoomer",) and "perceptive_zoomer" not in r.tools and "comparative_retriever" in r.tools
    r = resolve_policy("embedded", ["highfreq", "comparative_retriever"])
    assert set(r.disabled) == {"high_frequency_enhancer", "comparative_retriever"}
    assert set(r.tools) == {"perceptive_zoomer", "prior_retriever"} and r.label == "embedded-no-highfreq-no-retriever"
    assert resolve_policy("knn", ["zoom"]).tools == {}
    assert policy_label("embedded", ["perceptive_zoomer"]) == "embedded-no-zoom"
    assert policy_label("embedded-no-zoom", ["zoom"]) == "embedded-no-zoom"
    assert policy_label("knn", ["zoom"]) == "knn"
    with pytest.raises(PolicyConfigError, match="unknown tool"):
        resolve_policy("embedded-no-telescope")
    with pytest.raises(PolicyConfigError, match="unknown policy"):
        resolve_policy("oracle")


def _s(name: str, label: int, split: str = "test", **kw) -> Sample:
    return Sample(image_path=Path(f"/d/{name}.png"), category="c", label=label, split=split, **kw)


def test_split_uses_train_normals_and_validation_when_test_has_no_normal():
    samples = [_s("t0", NORMAL, "train"), _s("t1", NORMAL, "train"), _s("v0", NORMAL, "validation"),
               _s("a0", ANOMALOUS, defect_type="x")]
    split = plan.split_dataset(samples)
    assert split.protocol == "train" and split.pool == [Path("/d/t0.png"), Path("/d/t1.png")]
    assert [s.image_path.stem for s in split.test] == ["a0", "v0"] and "validation" in split.note


def test_split_without_train_holds_out_a_fixed_normal_pool():
    samples = [_s(f"n{i:02d}", NORMAL) for i in range(10)] + [_s(f"a{i}", ANOMALOUS, defect_type="x") for i in range(4)]
    split = plan.split_dataset(samples, max_normals=3)
    assert split.protocol == "held-out normals" and len(split.pool) == 3
    tested = {s.image_path for s in split.test}
    assert not tested & set(split.pool), "a reference must never be tested"
    assert len(split.test) == 14 - 3 and sum(not s.is_anomalous for s in split.test) == 7
    assert len(plan.split_dataset(samples, max_normals=50).pool) == 5  # at most half of the normals


def test_split_with_given_references():
    samples = [_s("a0", ANOMALOUS, defect_type="x", references=(Path("/d/a0_temp.png"),))]
    split = plan.split_dataset(samples)
    assert split.protocol == "given" and split.pool == [] and len(split.test) == 1


def test_datasets_are_found_under_their_release_folder_names(tmp_path, monkeypatch):
    """``--dataset all`` and a dataset's default root find a dataset unpacked under its release name
    (MVTec AD's ``mvtec_anomaly_detection``, BTAD's ``BTech_Dataset_transformed``); the project's own
    folder name wins where both exist."""
    for folder in ("mvtec_anomaly_detection", "BTech_Dataset_transformed", "KolektorSDD2"):
        (tmp_path / folder).mkdir()
    monkeypatch.setenv("IAD_DATA", str(tmp_path))
    assert plan.available_datasets() == [("mvtec", tmp_path / "mvtec_anomaly_detection"),
                                         ("btad", tmp_path / "BTech_Dataset_transformed"),
                                         ("kolektor", tmp_path / "KolektorSDD2")]
    assert plan.default_root("btad") == tmp_path / "BTech_Dataset_transformed"
    assert plan.default_root("visa") == tmp_path / "visa"  # none there: the project's own name, for the error
    (tmp_path / "mvtec_ad").mkdir()
    assert plan.default_root("mvtec") == tmp_path / "mvtec_ad"


def test_workers_start_with_the_group_that_registers_a_product_per_image():
    """DeepPCB's ``given`` group registers one product per test image: its expected cost counts that,
    so the workers' queue starts with it instead of leaving it to run alone at the end."""
    from iad_agent.eval.runner import estimated_cost

    test = [_s(f"a{i}", ANOMALOUS, defect_type="x") for i in range(71)]
    policies = ["knn", "embedded", "embedded-no-clip"]
    given = plan.Group("deeppcb", Path("/d"), "pcb", "given", 0, "given", [], test, policies)
    bigger = plan.Group("magnetic_tile", Path("/m"), "magnetic_tile", 4, 0, "held-out normals",
                        [Path(f"/m/{i}.png") for i in range(4)], test + test, policies)
    assert estimated_cost(given) > estimated_cost(bigger) > estimated_cost(dataclasses.replace(bigger, test=test))


def test_draw_references_is_seeded_and_all_means_the_pool():
    pool = [Path(f"/p/{i}.png") for i in range(20)]
    a = plan.draw_references(pool, 4, 0, "c")
    assert a == plan.draw_references(pool, 4, 0, "c") and len(a) == 4 and a == sorted(a, key=pool.index)
    assert any(plan.draw_references(pool, 4, s, "c") != a for s in range(1, 4))
    assert plan.draw_references(pool, "all", 3, "c") == pool
    assert len(plan.draw_references(pool, "all", 0, "c", max_normals=5)) == 5
    assert plan.draw_references(pool, 50, 0, "c") == pool


def test_plan_runs_the_whole_pool_once_and_skips_done_keys(data_root):
    config = plan.EvalConfig(datasets=[("mvtec", data_root / "mvtec_ad")], categories=["bottle"],
                                shots=[1, "all"], seeds=3, policies=["knn", "embedded"], max_test=4)
    groups = plan.plan(config)
    assert [(g.shots, g.seed) for g in groups] == [(1, 0), (1, 1), (1, 2), ("all", 0)]
    assert all(len(g.test) == 4 and g.protocol == "train" for g in groups)
    assert len(groups[-1].references) == 10  # bottle keeps 10 train/good images
    done = {groups[0].key("knn"), groups[0].key("embedded"), groups[1].key("knn")}
    again = plan.plan(config, done)
    assert [(g.shots, g.seed, g.policies) for g in again][:2] == [(1, 1, ["embedded"]), (1, 2, ["knn", "embedded"])]
    with pytest.raises(ValueError, match="not found"):
        plan.plan(plan.EvalConfig(datasets=[("mvtec", data_root / "mvtec_ad")], categories=["nope"]))


def test_parse_shots():
    assert plan.parse_shots(["1", "4", "all", "4"]) == [1, 4, "all"]
    assert plan.parse_shots(["0", "4"]) == [0, 4]  # 0 = zero-shot (tests/test_zeroshot.py)
    with pytest.raises(ValueError):
        plan.parse_shots(["-1"])


class _Result:
    """Just enough of an InspectionResult for answer_score."""

    def __init__(self, answer):
        self.trajectory = type("T", (), {"answer": answer})()


def test_answer_score_uses_the_policy_score_else_its_verdict():
    assert recordfile.answer_score(_Result(FinalAnswer(True, score=3.0))) == (3.0, "policy")
    assert recordfile.answer_score(_Result(FinalAnswer(True, confidence=0.8))) == (pytest.approx(0.9), "verdict")
    assert recordfile.answer_score(_Result(FinalAnswer(False))) == (0.0, "verdict")
    assert recordfile.answer_score(_Result(FinalAnswer(None))) == (0.5, "verdict")


# ----------------------------------------------------------------------------- aggregation


def _rec(category, seed, policy, auroc, n_normal=2, n_anomalous=3, shots=1, **kw):
    r = {"dataset": "d", "category": category, "shots": shots, "seed": seed, "policy": policy, "n_normal": n_normal,
         "n_anomalous": n_anomalous, "protocol": "train"}
    r.update({m: None for m in aggregate.METRICS})
    r.update(image_auroc=auroc, balanced_accuracy=auroc, ms_per_image_p50=10.0 * (seed + 1), **kw)
    return r


def test_aggregate_mean_std_over_seeds_and_two_class_summary():
    records = [_rec("a", 0, "knn", 0.6), _rec("a", 1, "knn", 0.8), _rec("b", 0, "knn", 1.0),
               _rec("c", 0, "knn", None, n_normal=0, box_hit_rate=0.5)]
    records[-1]["balanced_accuracy"] = 0.2  # defined on one class only: left out of the image-level mean
    aggs = {a["category"]: a for a in aggregate.aggregate(records)}
    assert aggs["a"]["image_auroc_mean"] == pytest.approx(0.7)
    assert aggs["a"]["image_auroc_std"] == pytest.approx(0.1414, abs=1e-4)  # sample std over 2 seeds
    assert aggs["a"]["n_seeds"] == 2 and aggs["b"]["image_auroc_std"] == 0.0
    (summary,) = aggregate.summarize(list(aggs.values()))
    assert summary["image_auroc_mean"] == pytest.approx(0.85)  # (0.7 + 1.0) / 2
    assert summary["balanced_accuracy_mean"] == pytest.approx(0.85)  # c is one-class: excluded
    assert summary["box_hit_rate_mean"] == 0.5 and summary["n_categories"] == 3
    assert summary["ms_per_image_p50_mean"] == pytest.approx((15 + 10 + 10) / 3)


def test_records_file_survives_a_torn_last_line(tmp_path):
    path = tmp_path / recordfile.RECORDS_FILE
    recordfile.append_record(path, _rec("a", 0, "knn", 0.6))
    recordfile.append_record(path, _rec("a", 0, "knn", 0.7))  # a rerun of the same key: the last wins
    with open(path, "a") as fh:
        fh.write('{"dataset": "d", "categ')  # killed mid-write
    records = recordfile.read_records(path)
    assert len(records) == 1 and records[0]["image_auroc"] == 0.7
    assert recordfile.done_keys(tmp_path) == {("d", "a", "1", 0, "knn")}


def test_benchmarks_markdown_renders_from_metrics(tmp_path):
    records = [_rec("a", 0, "knn", 0.6), _rec("a", 0, "embedded", 0.8)]
    doc = aggregate.build_metrics(records, {"runs": [{"command": "iad eval --x", "wall_s": 12.0, "cores": 2}], "cores": 2,
                                         "date": "2026-01-01", "total_wall_s": 12.0, "compute_s": 10.0})
    memory = {"normals": 200, "bank_patches": 16384, "build_s": 20.0, "peak_rss_mb_after_build": 1200.0,
              "peak_rss_mb": 1250.0, "ms_per_image_p50": 150.0, "date": "2026-01-01", "policy": "embedded",
              "command": "python -m iad_agent.eval.memory --normals 200"}
    mmad_doc = {"meta": {"runs": [{"command": "iad eval --questions mmad-style", "wall_s": 5.0, "cores": 2}]},
                "mmad": {"knn": {"datasets": {"d": {"types": {"Anomaly Detection": 0.5}, "average": 0.5,
                                                    "overkill": 0.25, "miss": 0.75, "n_questions": 4}},
                                 "average": {"types": {"Anomaly Detection": 0.5}, "average": 0.5, "overkill": 0.25,
                                             "miss": 0.75, "n_questions": 4}}}}
    text = report.benchmarks_markdown(json.loads(json.dumps(doc)), memory, mmad_doc)
    assert "iad eval --x" in text and "| 1 | embedded | 0.600 | 0.800 | +0.200" in text
    assert "AnomalyDINO" in text and "| 200 | 16384 |" in text
    assert "iad eval --questions mmad-style" in text and "| knn | d | 50.0 | 50.0 | 25.0 | 75.0 | 4 |" in text
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(doc))
    assert report.main([str(path)]) == 0


def test_benchmarks_markdown_checks_issue_11_targets_and_first_hour(capsys, tmp_path):
    far = {"a": (0.30, 0.05), "b": (0.08, 0.05)}  # a: measured 6x the promise; b: within 2x
    records = []
    for cat, (measured, promised) in far.items():
        for policy in ("knn", "embedded"):
            r = _rec(cat, 0, policy, 0.95)
            r.update(shots=4, n_normal=25, false_alarm_rate=measured, promised_fpr=promised, miss_rate=0.1, f1=0.0 if cat == "b" else 0.7)
            records.append(r)
    doc = aggregate.build_metrics(records, {"runs": [{"command": "iad eval --x", "wall_s": 1.0, "cores": 2}]})
    fh = {"category": "hazelnut", "cores": 2, "runs": [
        {"what": "register_s", "images": 50, "neighbour": "quiet", "seconds": 8.0, "load_before": 0.1},
        {"what": "register_s", "images": 50, "neighbour": "busy", "seconds": 20.0, "load_before": 1.1},
        {"what": "register_photos_s", "images": 4, "neighbour": "quiet", "seconds": 8.3, "load_before": 0.2,
         "size": [4000, 3000], "peak_mb": 1706}],
        "register_s_50_quiet": 8.0, "register_s_50_busy": 20.0, "register_photos_s_quiet": 8.3,
        "register_photos_peak_mb_quiet": 1706}
    text = report.benchmarks_markdown(json.loads(json.dumps(doc)), firsthour=fh, generated_by="python -m x --y")
    assert "Generated by `python -m x --y > docs/benchmarks.md`" in text
    assert "- image AUROC ≥ 0.93 at 4-shot: 0.950 — **met**" in text
    assert "- no category with F1 = 0: b (4-shot) — **not met**" in text
    assert "above 2× in a 4-shot 0.30 vs 0.05 — **not met**" in text and "b 4-shot" not in text.split("above 2× in")[1].split("\n")[0]
    assert "zero-shot (`--shots 0`) reported: no — **not met**" in text
    assert "| iad register (50 good images) | busy | 20.0 | 1.10 |" in text
    assert "- register_s_50_quiet ≤ 10 s: 8.0 s — **met**" in text and "2.5× — **not met**" in text
    assert "| iad register (4 good photos of 4000×3000 px; peak 1706 MB) | quiet | 8.3 | 0.20 |" in text
    assert "- register_photos_s_quiet ≤ 10 s: 8.3 s — **met**" in text
    assert "- register_photos_peak_mb_quiet ≤ 1500 MB: 1706 MB — **not met**" in text
    assert "numpy weights" not in text  # figures from before the weights cache: nothing said
    cold = report.benchmarks_markdown(json.loads(json.dumps(doc)), firsthour={**fh, "weights_cache_before": False})
    assert "The backbone's numpy weights were not cached yet" in cold
    (tmp_path / "m.json").write_text(json.dumps(doc))
    (tmp_path / "fh.json").write_text(json.dumps(fh))
    assert report.main([str(tmp_path / "m.json"), "--firsthour", str(tmp_path / "fh.json")]) == 0
    assert f"Generated by `python -m iad_agent.eval.report {tmp_path / 'm.json'} --firsthour" in capsys.readouterr().out


# ----------------------------------------------------------------------------- end to end


def _eval(out: Path, *args: str):
    # 2 shots: a 1-shot product also learns from augmented views of its one image, which costs more (~4 s vs ~2.4 s)
    return runner.invoke(app, ["eval", "--dataset", "mvtec", "--category", "hazelnut", "--shots", "2", "--max-test", "3",
                               "--out", str(out), *args])


@pytest.mark.slow
def test_iad_eval_end_to_end_and_resume(tmp_path, monkeypatch):
    out = tmp_path / "results"
    computed: list[tuple] = []
    real_run_group = eval_runner.run_group

    def counting_run_group(group, config, out_dir, on_image=None):
        computed.extend(group.key(p) for p in group.policies)
        return real_run_group(group, config, out_dir, on_image)

    monkeypatch.setattr(eval_runner, "run_group", counting_run_group)

    first = _eval(out, "--policy", "knn")
    assert first.exit_code == 0, first.output
    assert computed == [("mvtec", "hazelnut", "2", 0, "knn")]
    knn_record = recordfile.read_records(out / recordfile.RECORDS_FILE)[0]

    refused = _eval(out, "--policy", "knn")
    assert refused.exit_code == 2 and "--resume" in refused.output

    computed.clear()
    second = _eval(out, "--policy", "knn", "--policy", "embedded-no-zoom", "--resume")
    assert second.exit_code == 0, second.output
    assert computed == [("mvtec", "hazelnut", "2", 0, "embedded-no-zoom")], "finished records must not be redone"

    computed.clear()
    third = _eval(out, "--policy", "knn", "--policy", "embedded-no-zoom", "--resume")
    assert third.exit_code == 0 and computed == []

    records = {r["policy"]: r for r in recordfile.read_records(out / recordfile.RECORDS_FILE)}
    assert set(records) == {"knn", "embedded-no-zoom"}
    assert records["knn"]["finished_at"] == knn_record["finished_at"]
    assert records["embedded-no-zoom"]["disabled_tools"] == ["perceptive_zoomer"]

    doc = json.loads((out / "metrics.json").read_text())
    assert doc["schema"] == aggregate.SCHEMA and len(doc["records"]) == 2
    for r in doc["records"]:
        assert REQUIRED_KEYS <= set(r), REQUIRED_KEYS - set(r)
        assert (r["n_normal"], r["n_anomalous"]) == (1, 2)
        assert r["pixel_auroc"] is not None and 0 <= r["pixel_auroc"] <= 1  # hazelnut has masks
        assert r["peak_rss_mb"] > 0 and r["ms_per_image_p50"] > 0
        assert "samples" not in r
    assert records["knn"]["tool_calls_per_image"] == 0
    assert {(s["shots"], s["policy"]) for s in doc["summary"]} == {(2, "knn"), (2, "embedded-no-zoom")}

    with open(out / "samples.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and {r["verdict"] for r in rows} <= {"anomalous", "normal", "none"}
    for policy, record in ((p, r) for p, r in records.items() if r["box_hit_rate"] is not None):
        flagged = [r["box_hit"] == "True" for r in rows if r["policy"] == policy and r["label"] == "1"
                   and r["verdict"] == "anomalous" and r["box_hit"] != ""]
        expected = sum(flagged) / len(flagged) if flagged else None
        assert record["box_hit_rate_flagged"] == expected, "box hit rate among the defects the policy flagged"
    assert all(r["path"].startswith("mvtec_ad/hazelnut/test/") for r in rows)

    text = (out / "report.md").read_text()
    assert "image AUROC" in text and "oracle" in text
    for link in ("plots/roc_mvtec_hazelnut.png", "plots/auroc_bars.png"):
        assert f"({link})" in text and (out / link).stat().st_size > 1000
    assert len(doc["meta"]["runs"]) == 3


def test_iad_eval_on_a_plain_folder_of_real_images(tmp_path, data_root):
    """A product in no benchmark's layout (``good/``, one folder per defect type, masks under
    ``ground_truth/``) is evaluated as it is: good images held out as references, the rest tested,
    the defects' masks scored."""
    import shutil

    tiles = data_root / "magnetic_tile"
    if not tiles.is_dir():
        pytest.skip("Magnetic Tile not in the shared data")
    cat = tmp_path / "data" / "tile"
    for src in sorted((tiles / "MT_Free" / "Imgs").glob("*.jpg"))[:8]:
        (cat / "good").mkdir(parents=True, exist_ok=True)
        shutil.copy(src, cat / "good")
    for src in sorted((tiles / "MT_Blowhole" / "Imgs").glob("*.jpg"))[:3]:
        for folder, file in (("blowhole", src), (Path("ground_truth") / "blowhole", src.with_suffix(".png"))):
            (cat / folder).mkdir(parents=True, exist_ok=True)
            shutil.copy(file, cat / folder)
    out = tmp_path / "out"
    result = runner.invoke(app, ["eval", "--dataset", "folder", "--root", str(tmp_path / "data"), "--shots", "2",
                                 "--policy", "knn", "--out", str(out)])
    assert result.exit_code == 0, result.output
    (record,) = recordfile.read_records(out / recordfile.RECORDS_FILE)
    assert (record["dataset"], record["category"], record["protocol"]) == ("folder", "tile", "held-out normals")
    assert (record["n_normal"], record["n_anomalous"]) == (4, 3)
    assert record["image_auroc"] is not None and record["pixel_auroc"] is not None


def test_iad_eval_refuses_bad_options(tmp_path):
    bad = runner.invoke(app, ["eval", "--dataset", "nope", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown dataset" in bad.output
    bad = runner.invoke(app, ["eval", "--dataset", "mvtec", "--shots", "zero", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "--shots" in bad.output
    bad = runner.invoke(app, ["eval", "--dataset", "mvtec", "--policy", "embedded-no-telescope", "--out", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown tool" in bad.output
    assert not (tmp_path / recordfile.RECORDS_FILE).exists()


def test_set_threads_limits_torch_faiss_and_blas_pools():
    import torch
    from threadpoolctl import threadpool_info

    before = torch.get_num_threads()
    try:
        eval_runner.set_threads(1)
        assert torch.get_num_threads() == 1
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    finally:
        eval_runner.set_threads(before)


def test_plus_tool_policy_turns_a_switched_off_tool_back_on():
    from iad_agent.policies import PolicyConfigError, resolve_policy

    r = resolve_policy("embedded+highfreq")
    assert r.policy.weights == {"high_frequency_enhancer": r.policy.TRIAL_WEIGHT}
    assert r.policy.name == "embedded+high_frequency_enhancer" and r.label == "embedded+highfreq"
    assert "anomaly_map" not in r.tools and "high_frequency_enhancer" in r.tools and r.disabled == ()
    with pytest.raises(PolicyConfigError, match="telescope"):
        resolve_policy("embedded+telescope")


@pytest.mark.slow
def test_run_groups_with_two_workers_matches_one_process(tmp_path, data_root):
    """Two seeds' groups in two worker processes give the records one process gives. hazelnut (256 px) with
    2 shots: the cheapest registration (bottle's full-resolution 1-shot product took ~6.4 s of CPU, this ~2.4 s)."""
    config = plan.EvalConfig(datasets=[("mvtec", data_root / "mvtec_ad")], categories=["hazelnut"], shots=[2], seeds=2,
                             policies=["knn"], max_test=3, examples=False)
    groups = plan.plan(config)
    assert len(groups) == 2
    finished = []
    written = eval_runner.run_groups(groups, config, tmp_path / "two", workers=2, threads=1,
                                     on_group=lambda g, n: finished.append((g.seed, n)))
    assert written == 2 and sorted(n for _, n in finished) == [1, 2]
    parallel = {r["seed"]: r for r in recordfile.read_records(tmp_path / "two" / recordfile.RECORDS_FILE)}
    assert set(parallel) == {0, 1}
    eval_runner.run_groups(groups[:1], config, tmp_path / "one", workers=1, threads=1)
    (single,) = recordfile.read_records(tmp_path / "one" / recordfile.RECORDS_FILE)
    assert [s["score"] for s in single["samples"]] == [s["score"] for s in parallel[groups[0].seed]["samples"]]
    assert single["image_auroc"] == parallel[groups[0].seed]["image_auroc"]


def test_policies_share_one_prepared_query_and_answer_as_alone(hazelnut_product, data_root):
    from iad_agent.inspector import Inspector
    from iad_agent.policies import resolve_policy

    image = data_root / "mvtec_ad/hazelnut/test/crack/000.png"
    inspectors = [Inspector(hazelnut_product, r.policy, r.tools) for r in map(resolve_policy, ("knn", "embedded"))]
    prepared = inspectors[0].prepare(image)
    assert prepared.ms > 0 and not prepared.grid.flags.writeable  # shared: nobody may write into it
    shared = [inspector.inspect(prepared) for inspector in inspectors]
    alone = [inspector.inspect(image) for inspector in inspectors]
    for a, b, plain in zip(shared, alone, (True, False)):  # knn answers from the plain look, embedded from the fused one
        look, heat = (prepared.look.plain, prepared.plain_heatmap) if plain else (prepared.look, prepared.heatmap)
        assert a.episode.grid is prepared.grid and a.episode.look is prepared.look and a.heatmap is heat
        assert a.trajectory.query_path == image and a.trajectory.evidence["score"] == prepared.look.score  # what was seen
        if plain:  # knn's verdict is the plain look's score (the agent's fuses its tools' evidence)
            assert a.trajectory.answer.score == look.score
        assert a.to_dict()["score"] == b.to_dict()["score"] and a.to_dict()["tool_calls"] == b.to_dict()["tool_calls"]
    other = inspectors[0].__class__(hazelnut_product.__class__(hazelnut_product.name, hazelnut_product.bank, hazelnut_product.gate))
    with pytest.raises(ValueError, match="prepared for product"):
        other.inspect(prepared)

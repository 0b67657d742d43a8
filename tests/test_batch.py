"""Folder batches: `iad inspect DIR`, `iad batch --engine local`, results files, resume, exit status."""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from iad_agent import api
from iad_agent.cli import app
from iad_agent.scale.folder import FIELDS, BatchError, ResultFile, find_images, read_parquet, result_row

runner = CliRunner()
VOLATILE = {"elapsed_ms", "heatmap"}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, hazelnut3_copy):
    """hazelnut registered from 3 good images (a copy of the session's shared workspace)."""
    return hazelnut3_copy(tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def parts(tmp_path_factory, data_root):
    """A line's folder: two good parts, one hole, one crack in a subfolder, one broken upload, a hidden file."""
    folder = tmp_path_factory.mktemp("line")
    src = data_root / "mvtec_ad/hazelnut/test"
    shutil.copy(src / "good/000.png", folder / "a_good.png")
    shutil.copy(src / "good/001.png", folder / "b_good.png")
    shutil.copy(src / "hole/001.png", folder / "c_hole.png")
    (folder / "sub").mkdir()
    shutil.copy(src / "crack/000.png", folder / "sub" / "d_crack.png")
    (folder / "e_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / ".hidden.png").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    return folder


def _json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _comparable(d: dict) -> dict:
    d = {k: v for k, v in d.items() if k not in VOLATILE | {"trace"}}
    return d


def test_find_images_folders_globs_files(parts):
    found = find_images(parts)
    assert [p.name for p in found] == ["a_good.png", "b_good.png", "c_hole.png", "e_broken.png", "d_crack.png"]
    assert [p.name for p in find_images(parts, recursive=False)] == ["a_good.png", "b_good.png", "c_hole.png", "e_broken.png"]
    assert [p.name for p in find_images(str(parts / "*_good.png"))] == ["a_good.png", "b_good.png"]
    assert [p.name for p in find_images([parts / "c_hole.png", str(parts / "**" / "d_*.png")])] == ["c_hole.png", "d_crack.png"]
    with pytest.raises(BatchError, match="no such file or folder"):
        find_images(parts / "missing")
    with pytest.raises(BatchError, match="matches no image"):
        find_images(str(parts / "*.jpg"))


def test_inspect_folder_writes_csv_and_jsonl_and_exits_1_on_an_anomaly(workspace, parts, tmp_path):
    out, jsonl = tmp_path / "r.csv", tmp_path / "r.jsonl"
    r = runner.invoke(app, ["inspect", str(parts), "--product", "hazelnut", "--workspace", str(workspace),
                            "--out", str(out), "--jsonl", str(jsonl)])
    assert r.exit_code == 1, r.output  # at least one part anomalous
    assert "5 images: 2 anomalous, 2 normal, 0 no answer, 1 failed" in r.stdout
    rows = list(csv.DictReader(out.open()))
    assert tuple(rows[0]) == FIELDS and len(rows) == 5
    by_name = {os.path.basename(r["image"]): r for r in rows}
    assert by_name["c_hole.png"]["anomaly_present"] == "True" and by_name["a_good.png"]["anomaly_present"] == "False"
    assert "e_broken.png" in by_name["e_broken.png"]["error"] and by_name["e_broken.png"]["score"] == ""
    assert len(json.loads(by_name["c_hole.png"]["box"])) == 4
    heatmaps = [r["heatmap"] for r in rows if not r["error"]]  # into a run folder of the workspace, as for several images
    assert len(set(heatmaps)) == 4 and all(os.path.isfile(h) and h.startswith(str(workspace / "runs")) for h in heatmaps)
    objects = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert len(objects) == 5 and "trace" in objects[0] and {"image", "error"} == set(objects[3])
    # the answers are those of `iad inspect --json` on each image
    single = runner.invoke(app, ["inspect", str(parts / "c_hole.png"), str(parts / "sub/d_crack.png"), "--product",
                                 "hazelnut", "--workspace", str(workspace), "--json"])
    one_by_one = {d["image"]: _comparable(d) for d in _json_lines(single.stdout)}
    batch = {d["image"]: _comparable(d) for d in objects if "trace" in d}
    assert one_by_one == {k: batch[k] for k in one_by_one}
    # an existing results file is never overwritten without --resume
    again = runner.invoke(app, ["inspect", str(parts), "--product", "hazelnut", "--workspace", str(workspace), "--out", str(out)])
    assert again.exit_code == 2 and "already exists; pass --resume" in again.output


def test_exit_status_0_all_normal_3_when_an_image_failed(workspace, parts, tmp_path):
    good = str(parts / "*_good.png")
    r = runner.invoke(app, ["inspect", good, "--product", "hazelnut", "--workspace", str(workspace), "--out", str(tmp_path / "a.csv")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["inspect", good, str(parts / "e_broken.png"), "--product", "hazelnut", "--workspace",
                            str(workspace), "--jsonl", str(tmp_path / "b.jsonl")])
    assert r.exit_code == 3, r.output
    r = runner.invoke(app, ["inspect", str(parts), "--product", "walnut", "--workspace", str(workspace), "--out", str(tmp_path / "c.csv")])
    assert r.exit_code == 2 and "walnut" in r.output


def test_resume_drops_a_torn_row_and_inspects_only_what_is_missing(workspace, parts, tmp_path, monkeypatch):
    out = tmp_path / "r.csv"
    images = find_images(parts)
    with ResultFile(out) as results:
        results.write(result_row(images[0], {"product": "hazelnut", "anomaly_present": False, "tool_calls": []}))
    with out.open("a") as fh:
        fh.write(f"{images[1]},hazelnut,emb")  # the interrupted write of the second row
    inspected = []
    real = api.inspect_many

    def spy(images, *args, **kwargs):
        images = list(images)
        inspected.extend(images)
        return real(images, *args, **kwargs)

    monkeypatch.setattr(api, "inspect_many", spy)
    r = runner.invoke(app, ["inspect", str(parts), "--product", "hazelnut", "--workspace", str(workspace), "--out", str(out), "--resume"])
    assert r.exit_code == 1, r.output
    assert inspected == images[1:] and "(1 done before, not inspected again)" in r.stdout
    rows = list(csv.DictReader(out.open()))
    assert [row["image"] for row in rows] == [str(p) for p in images]


def test_batch_local_parquet_equals_csv(workspace, parts, tmp_path):
    pq, csv_out = tmp_path / "r.parquet", tmp_path / "r.csv"
    r = runner.invoke(app, ["batch", str(parts), "--product", "hazelnut", "--workspace", str(workspace), "--out", str(pq)])
    assert r.exit_code == 1, r.output
    r2 = runner.invoke(app, ["batch", str(parts), "--product", "hazelnut", "--workspace", str(workspace), "--out", str(csv_out)])
    assert r2.exit_code == 1
    rows = read_parquet(pq)
    assert not (tmp_path / "r.parquet.partial.jsonl").exists()
    flat = [{k: ("" if v is None else json.dumps(v) if isinstance(v, list) else str(v)) for k, v in row.items() if k not in VOLATILE}
            for row in rows]
    assert flat == [{k: v for k, v in row.items() if k not in VOLATILE} for row in csv.DictReader(csv_out.open())]


@pytest.mark.slow
def test_killed_run_resumes_without_loss_or_duplicates(workspace, data_root, tmp_path):
    folder = tmp_path / "many"
    folder.mkdir()
    for kind in ("good", "hole", "crack", "cut", "print"):
        for p in sorted((data_root / f"mvtec_ad/hazelnut/test/{kind}").glob("*.png")):
            shutil.copy(p, folder / f"{kind}_{p.name}")
    out = tmp_path / "r.jsonl"
    cmd = [sys.executable, "-c", "from iad_agent.cli import app; app()", "inspect", str(folder), "--product", "hazelnut",
           "--workspace", str(workspace), "--jsonl", str(out), "--policy", "knn"]  # knn: the same path, fewer models to load
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not out.exists() or out.read_text().count("\n") < 3):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = out.read_text().count("\n")
    assert 3 <= done_before < 10
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stderr
    images = [json.loads(line)["image"] for line in out.read_text().splitlines()]
    assert sorted(images) == sorted(str(p) for p in folder.iterdir()) and len(set(images)) == 10
    assert f"({done_before} done before" in r.stdout

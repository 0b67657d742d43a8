"""`iad register` / `iad inspect` as a user runs them, including bad input."""

import json
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from iad_agent.cli import app

runner = CliRunner()
SCHEMA_KEYS = {"anomaly_present", "score", "threshold", "box", "defect_type", "confidence", "tool_calls", "heatmap", "elapsed_ms"}


@pytest.fixture(scope="module")
def normals(tmp_path_factory, data_root):
    folder = tmp_path_factory.mktemp("normals")
    for p in sorted((data_root / "mvtec_ad/hazelnut/train/good").glob("*.png"))[:40:8]:
        shutil.copy(p, folder / p.name)
    return folder


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, normals, data_root):
    ws = tmp_path_factory.mktemp("ws")
    defects = tmp_path_factory.mktemp("defects")
    for kind in ("hole", "print"):
        (defects / kind).mkdir()
        shutil.copy(data_root / f"mvtec_ad/hazelnut/test/{kind}/000.png", defects / kind / "000.png")
    r = runner.invoke(app, ["register", "hazelnut", "--normals", str(normals), "--defects", str(defects), "--workspace", str(ws)])
    assert r.exit_code == 0, r.output
    assert "registered hazelnut: 5 good images" in r.output
    return ws


def test_inspect_json_schema_and_files(workspace, data_root, tmp_path):
    image = data_root / "mvtec_ad/hazelnut/test/hole/001.png"
    report = tmp_path / "out" / "hole.html"
    r = runner.invoke(app, ["inspect", str(image), "--product", "hazelnut", "--workspace", str(workspace), "--json", "--report", str(report)])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout.strip().splitlines()[-1])
    assert SCHEMA_KEYS <= set(d)
    assert d["anomaly_present"] is True and d["defect_type"] == "hole"
    assert [c["defect_type"] for c in d["defect_candidates"]][0] == "hole"
    assert all(set(c) == {"name", "arguments"} for c in d["tool_calls"])
    assert len(d["box"]) == 4 and all(0 <= v <= 1 for v in d["box"])
    heat = Image.open(d["heatmap"])
    assert heat.size == (256, 256) and heat.mode == "L"
    html = report.read_text()
    assert html.count("data:image/png;base64") >= 3 and "perceptive_zoomer" in html and "Reason." in html


@pytest.mark.slow
def test_inspect_one_off_with_normals_folder(normals, data_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = runner.invoke(app, ["inspect", str(data_root / "mvtec_ad/hazelnut/test/good/000.png"), "--normals", str(normals)])
    assert r.exit_code == 0, r.output
    assert "NORMAL" in r.output and (tmp_path / "000_heatmap.png").exists()


def test_unknown_product_and_bad_query(workspace, tmp_path):
    r = runner.invoke(app, ["inspect", "x.png", "--product", "walnut", "--workspace", str(workspace)])
    assert r.exit_code == 2 and "walnut" in r.output and "iad register" in r.output
    fake = tmp_path / "photo.png"
    fake.write_text("hello")
    r = runner.invoke(app, ["inspect", str(fake), "--product", "hazelnut", "--workspace", str(workspace)])
    assert r.exit_code == 1 and "photo.png: not a readable image" in r.output


def _bank_state(ws):
    meta = json.loads((ws / "products/hazelnut/bank/bank.json").read_text())
    return meta["paths"], meta["calibration"]["global_scores"]


def test_bad_registrations_name_the_file_and_keep_the_product(workspace, tmp_path, normals):
    before = _bank_state(workspace)
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(app, ["register", "hazelnut", "--normals", str(empty), "--workspace", str(workspace)])
    assert r.exit_code == 2 and "no images found" in r.output and "empty" in r.output

    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.new("RGB", (300, 200), (120, 80, 40)).save(mixed / "odd_size.png")
    r = runner.invoke(app, ["register", "hazelnut", "--normals", str(mixed), "--workspace", str(workspace)])
    assert r.exit_code == 2 and "odd_size.png: image is 300x200" in r.output.replace("\n", "")

    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(next(normals.iterdir()), broken / "fine.png")
    (broken / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    r = runner.invoke(app, ["register", "hazelnut", "--normals", str(broken), "--workspace", str(workspace)])
    assert r.exit_code == 2 and "broken.png" in r.output
    assert _bank_state(workspace) == before  # nothing registered earlier is lost


@pytest.mark.slow
def test_register_adds_incrementally(normals, tmp_path, data_root):
    ws = tmp_path / "ws"
    first = tmp_path / "first"
    first.mkdir()
    for p in sorted(normals.iterdir())[:2]:
        shutil.copy(p, first / p.name)
    assert runner.invoke(app, ["register", "nut", "--normals", str(first), "--workspace", str(ws)]).exit_code == 0
    r = runner.invoke(app, ["register", "nut", "--normals", str(normals), "--workspace", str(ws)])
    # the 2 images registered first are in `normals` too: only the 3 new ones are added (issue 9)
    assert r.exit_code == 0 and "registered nut: 5 good images" in r.output
    listed = json.loads(runner.invoke(app, ["products", "--workspace", str(ws), "--json"]).stdout)
    assert [(p["name"], p["images"]) for p in listed] == [("nut", 5)]


@pytest.mark.slow
def test_one_good_image_is_enough(tmp_path, normals):
    single = tmp_path / "single"
    single.mkdir()
    shutil.copy(sorted(normals.iterdir())[0], single / "only.png")
    r = runner.invoke(app, ["register", "solo", "--normals", str(single), "--workspace", str(tmp_path / "ws")])
    assert r.exit_code == 0 and "augmented-views" in r.output.replace("\n", " ")

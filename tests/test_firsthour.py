"""Issue 9, a newcomer's first hour: honest output of `iad register` / `iad inspect`, each item a test.

The shared workspace (``cli_workspace``, conftest) has hazelnut registered from 5 good images
with labelled hole and print examples; tests that change a product register their own.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from iad_agent.cli import app

runner = CliRunner()
HOLE, CRACK, GOOD = "mvtec_ad/hazelnut/test/hole/001.png", "mvtec_ad/hazelnut/test/crack/001.png", "mvtec_ad/hazelnut/test/good/000.png"


def _floats(value):
    if isinstance(value, float):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _floats(v)
    elif isinstance(value, list):
        for v in value:
            yield from _floats(v)


# ----------------------------------------------------------------------------- item 1: register


def test_register_fpr_alone_keeps_images_and_a_rerun_changes_nothing(cli_normals, tmp_path):
    goods = sorted(cli_normals.iterdir())[:2]
    folder = tmp_path / "two"
    folder.mkdir()
    for p in goods:
        shutil.copy(p, folder / p.name)
    ws = str(tmp_path / "ws")
    assert runner.invoke(app, ["register", "nut", "--normals", str(folder), "--workspace", ws]).exit_code == 0
    r = runner.invoke(app, ["register", "nut", "--fpr", "0.01", "--workspace", ws, "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert d["changed"] and d["fpr"] == 0.01 and d["images"] == 2 and d["added"] == []
    assert d["limits"]["threshold"]["after"] > d["limits"]["threshold"]["before"]  # a rarer false alarm: higher
    # the same folder again: nothing new, and the stored 0.01 is kept (--fpr defaults to the stored rate)
    r = runner.invoke(app, ["register", "nut", "--normals", str(folder), "--workspace", ws])
    assert r.exit_code == 0 and r.stdout.startswith("nothing new: the 2 given images are already registered")
    assert "false-alarm rate 0.01" in r.stdout
    listed = json.loads(runner.invoke(app, ["products", "--workspace", ws, "--json"]).stdout)
    assert [(p["images"], p["fpr"]) for p in listed] == [(2, 0.01)]
    r = runner.invoke(app, ["register", "walnut", "--fpr", "0.01", "--workspace", ws])
    assert r.exit_code == 2 and "not registered" in r.stderr and r.stdout == ""


def test_api_load_product_lets_the_damage_through_unchanged(tmp_path, cli_normals):
    from iad_agent import api, store
    from iad_agent.errors import DamagedProduct

    api.register("nut", sorted(cli_normals.iterdir())[:1], workspace=tmp_path)
    (store.current(tmp_path / "products" / "nut") / "gate.json").write_text("")
    with pytest.raises(DamagedProduct) as info:
        api.load_product("nut", tmp_path)
    assert str(info.value).count("iad products rm nut --yes") == 1  # the repair advice once, not wrapped twice


# ----------------------------------------------------------------------------- items 2, 3, 5, 13: inspect output


@pytest.fixture(scope="module")
def two_of_a_name(tmp_path_factory, data_root):
    """``a/000.png`` and ``b/000.png``: an anomalous and a good image with the same file name."""
    root = tmp_path_factory.mktemp("same_names")
    for sub, src in (("a", HOLE), ("b", GOOD)):
        (root / sub).mkdir()
        shutil.copy(data_root / src, root / sub / "000.png")
    return [root / "a" / "000.png", root / "b" / "000.png"]


def test_several_images_get_their_own_heat_maps_and_reports_in_a_run_folder(cli_workspace, two_of_a_name, tmp_path,
                                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    index = tmp_path / "reports" / "index.html"
    r = runner.invoke(app, ["inspect", *map(str, two_of_a_name), "--product", "hazelnut", "--workspace", str(cli_workspace),
                            "--json", "--report", str(index)])
    assert r.exit_code == 1, r.output  # one anomalous part
    results = [json.loads(line) for line in r.stdout.splitlines()]
    heatmaps = [d["heatmap"] for d in results]
    assert len(set(heatmaps)) == 2 and all(os.path.isfile(h) for h in heatmaps)  # no overwriting
    run = os.path.dirname(heatmaps[0])
    assert os.path.dirname(run) == str(cli_workspace / "runs") and os.path.dirname(heatmaps[1]) == run
    assert list(tmp_path.glob("*.png")) == []  # nothing in the current folder
    page = index.read_text()
    links = [line.split('href="')[1].split('"')[0] for line in page.splitlines() if 'href="' in line]
    assert len(links) == 2 and all((index.parent / link).is_file() for link in links)
    assert "1 anomalous, 1 normal" in page
    # a second run goes to a new folder
    r = runner.invoke(app, ["inspect", str(two_of_a_name[1]), "--product", "hazelnut", "--workspace", str(cli_workspace), "--json"])
    assert r.exit_code == 0 and os.path.dirname(json.loads(r.stdout)["heatmap"]) != run


def test_output_is_plain_numbers_and_words_on_stdout(cli_workspace, data_root, tmp_path):
    r = runner.invoke(app, ["inspect", str(data_root / HOLE), "--product", "hazelnut", "--workspace", str(cli_workspace),
                            "--out-dir", str(tmp_path), "--report", str(tmp_path / "r.html")])
    assert r.exit_code == 1
    line = r.stdout.splitlines()[0]
    assert ": ANOMALOUS, score " in line and "% of the threshold" in line and "box [0." in line  # the box is shown
    assert "defect type hole (labelled examples)" in line and r.stderr.strip() == ""
    reason = r.stdout.splitlines()[1]
    assert "Fused evidence" not in reason and "weighted tool reading" not in reason
    assert "Perceptive zoomer: zoomed in, the region differs from the same region of the nearest good part" in reason
    assert "% of the threshold" in reason and "Defect type hole: the closest labelled example" in reason
    r = runner.invoke(app, ["inspect", str(data_root / HOLE), "--product", "hazelnut", "--workspace", str(cli_workspace),
                            "--out-dir", str(tmp_path), "--json"])
    text = r.stdout + (tmp_path / "r.html").read_text()
    assert "np.float" not in text and "np.int" not in text
    d = json.loads(r.stdout)
    rest = {k: v for k, v in d.items() if k not in ("score", "threshold")}  # those two keep 6 decimals
    assert all(len(repr(abs(v)).replace(".", "").lstrip("0")) <= 6 for v in _floats(rest))  # at most 6 significant digits
    assert isinstance(d["trace"]["evidence"]["score"], float) and d["trace"]["steps"][0]["thought"].count("[0.") == 1


def test_exit_status_says_normal_anomalous_usage_or_failure(cli_workspace, data_root, tmp_path):
    ws = ["--product", "hazelnut", "--workspace", str(cli_workspace), "--out-dir", str(tmp_path)]
    assert runner.invoke(app, ["inspect", str(data_root / GOOD), *ws]).exit_code == 0
    assert runner.invoke(app, ["inspect", str(data_root / GOOD), str(data_root / HOLE), *ws]).exit_code == 1
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n")
    r = runner.invoke(app, ["inspect", str(data_root / GOOD), str(bad), *ws])
    assert r.exit_code == 3 and "NORMAL" in r.stdout and "bad.png" in r.stderr  # the good one still answered
    assert runner.invoke(app, ["inspect", str(data_root / GOOD), *ws[2:], "--product", "walnut"]).exit_code == 2  # no such product
    assert runner.invoke(app, ["inspect", str(data_root / GOOD), *ws, "--max-steps", "0"]).exit_code == 2


# ----------------------------------------------------------------------------- item 9: writability first


def test_unwritable_outputs_are_refused_before_any_work(cli_workspace, data_root, tmp_path, monkeypatch):
    import iad_agent.api

    def boom(*args, **kwargs):
        raise AssertionError("the product was loaded before the outputs were checked")

    monkeypatch.setattr(iad_agent.api, "load_product", boom)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o500)
    cases = [["--report", str(a_file / "r.html")], ["--report", str(tmp_path)], ["--out-dir", str(a_file)],
             ["--heatmap", str(tmp_path)]]
    if os.geteuid() != 0:  # root writes into read-only folders
        cases.append(["--report", str(read_only / "r.html")])
    for extra in cases:
        r = runner.invoke(app, ["inspect", str(data_root / GOOD), "--product", "hazelnut", "--workspace", str(cli_workspace), *extra])
        assert r.exit_code == 2 and "Traceback" not in r.output and r.stdout == "", (extra, r.output)
    r = runner.invoke(app, ["inspect", str(data_root / GOOD), "--product", "hazelnut", "--workspace", str(a_file)])
    assert r.exit_code == 2 and "--out-dir" in r.stderr  # the default run folder lies in an unusable workspace


def test_a_write_that_fails_after_the_work_keeps_the_result(cli_workspace, data_root, tmp_path, monkeypatch):
    import iad_agent.report

    def full_disk(result, path):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(iad_agent.report, "save_report", full_disk)
    r = runner.invoke(app, ["inspect", str(data_root / GOOD), "--product", "hazelnut", "--workspace", str(cli_workspace),
                            "--out-dir", str(tmp_path), "--report", str(tmp_path / "r.html"), "--json"])
    assert r.exit_code == 3 and json.loads(r.stdout)["anomaly_present"] is False  # the answer is printed all the same
    assert "r.html: cannot write the report (No space left on device)" in r.stderr and "Traceback" not in r.output


def test_an_os_error_anywhere_is_a_message_not_a_traceback(cli_workspace, monkeypatch):
    import iad_agent.workspace

    def denied(self, good_images=False):
        raise PermissionError(13, "Permission denied", "/somewhere/products")

    monkeypatch.setattr(iad_agent.workspace.Workspace, "summaries", denied)
    r = runner.invoke(app, ["products", "--workspace", str(cli_workspace)])
    assert r.exit_code == 3 and "/somewhere/products: Permission denied" in r.stderr and "Traceback" not in r.output


# ----------------------------------------------------------------------------- item 4: defect type


def test_a_foreign_part_is_anomalous_of_unknown_type(cli_workspace, data_root, tmp_path):
    grid = data_root / "mvtec_ad/grid/test/good/000.png"
    r = runner.invoke(app, ["inspect", str(grid), "--product", "hazelnut", "--workspace", str(cli_workspace),
                            "--out-dir", str(tmp_path), "--json"])
    d = json.loads(r.stdout)
    assert d["anomaly_present"] is True and d["defect_type"] == "unknown" and d["defect_source"] == "labelled examples"
    assert d["defect_candidates"][0]["similarity"] < 0.5 and "Defect type unknown" in d["reason"]


def test_defect_type_limits_are_calibrated_not_guessed(hazelnut_product):
    import numpy as np

    from iad_agent.defect_types import DESCRIPTIONS, NULL_QUANTILE, build_text_index, name_from_descriptions

    index = build_text_index(hazelnut_product)  # MMAD's descriptions: packaged embeddings, no model loaded
    n = len([k for k in hazelnut_product.priors if k != "good"])
    best = (index.vectors[n:] @ index.vectors[:n].T).max(axis=1)
    assert np.mean(best > index.min_similarity) <= 1 - NULL_QUANTILE + 1e-9  # only the rarest evidence names a type
    named = name_from_descriptions([["crack", index.min_similarity + 0.01], ["hole", 0.1]], index.min_similarity)
    unknown = name_from_descriptions([["crack", index.min_similarity - 0.01]], index.min_similarity)
    assert (named.defect_type, named.source, unknown.defect_type) == ("crack", DESCRIPTIONS, "unknown")


def test_descriptions_are_matched_without_loading_a_language_model(hazelnut_product, data_root, monkeypatch):
    import iad_agent.tools.priors as priors
    from iad_agent.defect_types import build_text_index
    from iad_agent.inspector import Inspector

    product = hazelnut_product._copy()
    product.text_index = build_text_index(product)
    monkeypatch.setattr(priors, "sentence_model", lambda: pytest.fail("MiniLM was loaded to inspect"))
    monkeypatch.setattr(priors, "embed_text", lambda text: pytest.fail(f"{text!r} was embedded to inspect"))
    result = Inspector(product).inspect(data_root / HOLE)
    d = result.to_dict()
    assert "prior_retriever" in [c["name"] for c in d["tool_calls"]] and d["defect_source"] == "descriptions"


# ----------------------------------------------------------------------------- item 11, 12: speed, threads, logging


def test_listing_products_imports_no_numerical_library(cli_workspace):
    code = ("import sys; from iad_agent.cli import app\ntry:\n    app(['products', '--workspace', sys.argv[1]])\n"
            "except SystemExit:\n    pass\nprint(sorted(m for m in ('numpy', 'PIL', 'torch', 'faiss', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(cli_workspace)], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]" and "hazelnut" in out


def test_thread_pools_get_the_idle_cores(monkeypatch):
    import iad_agent.cli as cli
    from iad_agent.cli import busy_cores, configure_threads, default_threads

    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])  # a real busy neighbour
    try:
        time.sleep(0.3)
        assert busy_cores() >= 1  # seen at once, not after a minute of load average
    finally:
        spinner.kill()
        spinner.wait()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    for busy, threads in ((0.0, 2), (1.0, 1), (9.0, 1)):
        monkeypatch.setattr(cli, "busy_cores", lambda b=busy: b)
        assert default_threads() == threads
    import torch

    threads = torch.get_num_threads()
    try:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "IAD_THREADS", "OMP_WAIT_POLICY"):
            monkeypatch.delenv(var, raising=False)
        assert configure_threads(None) == 1 and os.environ["OPENBLAS_NUM_THREADS"] == "1"
        assert torch.get_num_threads() == 1  # torch already loaded (in-process): set directly
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # what the user set wins
        assert configure_threads(None) == 2
    finally:
        torch.set_num_threads(threads)


def test_verbose_keeps_other_libraries_quiet_unless_asked():
    from iad_agent.cli import configure_logging

    try:
        configure_logging(1)
        assert logging.getLogger("iad_agent.tools").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("PIL.PngImagePlugin").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("faiss.loader").isEnabledFor(logging.INFO)
        configure_logging(2)
        assert logging.getLogger("PIL.PngImagePlugin").isEnabledFor(logging.DEBUG)
    finally:
        configure_logging(0)
    assert not logging.getLogger("iad_agent").isEnabledFor(logging.DEBUG)


# ----------------------------------------------------------------------------- item 14: the report


def test_the_report_names_files_folds_long_text_and_captions_truthfully(hazelnut_product, data_root):
    from iad_agent.inspector import Inspector
    from iad_agent.policies import ScriptedPolicy
    from iad_agent.report import render_html
    from iad_agent.tools import default_tools
    from iad_agent.types import FinalAnswer, Step, ToolCall

    box = [0.4, 0.45, 0.6, 0.65]
    script = [Step(tool_calls=[ToolCall("comparative_retriever", {"box": box}), ToolCall("prior_retriever", {})]),
              Step(answer=FinalAnswer(False, reason="fine"))]
    result = Inspector(hazelnut_product, ScriptedPolicy(script), default_tools()).inspect(data_root / HOLE)
    page = render_html(result)
    ref = os.path.basename(hazelnut_product.bank.paths[result.trajectory.steps[0].observations[0].data["references"][0]])
    assert f"good reference {ref}, " in page and "#" + ref not in page and "Nearest good image: #" not in page
    assert "<details><summary>the whole text</summary>" in page  # the long priors are folded
    assert "heat map overlay with the box" not in page and "heat map overlay" in page  # normal: no box drawn


# ----------------------------------------------------------------------------- item 15: help, defects, tiny model, split


def test_help_shows_words_and_defaults():
    text = runner.invoke(app, ["inspect", "--help"], prog_name="iad", terminal_width=200).stdout
    assert "Usage: iad inspect [OPTIONS] IMAGE..." in text
    assert not any(bad in text for bad in ("{images}", "<list", "<bool>", "<path>", "<str>"))
    for option, default in (("--timeout SECONDS", "120"), ("--max-retries N", "3"), ("--max-image-side PIXELS", "768"),
                            ("--max-steps N", "6")):
        row = next(line for line in text.splitlines() if option in line)
        assert f"default: {default}" in row, row
    assert "tiny-model" in runner.invoke(app, ["dev", "--help"]).stdout


def test_a_wrong_defects_layout_is_refused_before_any_image_is_read(cli_normals, tmp_path, monkeypatch):
    import iad_agent.registration

    monkeypatch.setattr(iad_agent.registration, "_load_all", lambda *a, **k: pytest.fail("images were read"))
    flat = tmp_path / "defects"
    flat.mkdir()
    shutil.copy(next(cli_normals.iterdir()), flat / "crack_01.png")
    r = runner.invoke(app, ["register", "nut", "--normals", str(cli_normals), "--defects", str(flat), "--workspace",
                            str(tmp_path / "ws")])
    assert r.exit_code == 2 and "no defect-type subfolders (found 1 image directly in it" in r.stderr
    assert not (tmp_path / "ws" / "products" / "nut").exists()


def test_the_tiny_model_command_refuses_a_used_folder(tmp_path):
    (tmp_path / "x").write_text("keep me")
    r = runner.invoke(app, ["dev", "tiny-model", str(tmp_path)])
    assert r.exit_code == 2 and "not an empty folder" in r.stderr and (tmp_path / "x").read_text() == "keep me"


def test_a_split_keeps_a_defect_in_the_test_part():
    from pathlib import Path

    from iad_agent.trajectories.splits import make_split
    from iad_agent.types import Sample

    samples = [Sample(Path(f"/d/c/train/good/{i}.png"), "c", 0, split="train") for i in range(12)]
    for kind in ("crack", "hole", "cut"):  # two images per defect type: 20 % of each rounds to none
        samples += [Sample(Path(f"/d/c/test/{kind}/{i}.png"), "c", 1, kind) for i in range(2)]
    split = make_split(samples, "x", "/d", test_fraction=0.2)
    assert any("/test/" in p and "/good/" not in p for p in split.test["c"])
    assert all(any(kind in p for p in split.train["c"]) for kind in ("crack", "hole", "cut"))  # training keeps each type


def test_output_files_follow_the_umask(cli_workspace, data_root, tmp_path):
    old = os.umask(0o022)
    try:
        r = runner.invoke(app, ["inspect", str(data_root / GOOD), "--product", "hazelnut", "--workspace", str(cli_workspace),
                                "--out-dir", str(tmp_path), "--report", str(tmp_path / "r.html"), "--json"])
    finally:
        os.umask(old)
    heatmap = json.loads(r.stdout)["heatmap"]
    assert oct(os.stat(heatmap).st_mode & 0o777) == oct(0o644) and oct((tmp_path / "r.html").stat().st_mode & 0o777) == oct(0o644)


def test_training_progress_replaces_the_trainers_printing():
    from types import SimpleNamespace

    from rich.console import Console
    from rich.progress import Progress
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    from iad_agent.cli.progress import quiet_trainer_printing, trainer_progress

    removed = []
    quiet_trainer_printing(SimpleNamespace(remove_callback=removed.append))
    assert removed == [ProgressCallback, PrinterCallback]  # no tqdm bar, no metric dicts on stdout
    bar = Progress(console=Console(file=open(os.devnull, "w")))  # noqa: SIM115 - closed with the process
    callback = trainer_progress(bar, "fine-tuning")
    callback.on_train_begin(None, SimpleNamespace(max_steps=4), None)
    callback.on_step_end(None, SimpleNamespace(global_step=3), None)
    callback.on_log(None, None, None, logs={"loss": 0.5})
    task = bar.tasks[0]
    assert (task.completed, task.total, task.description) == (3, 4, "fine-tuning (loss 0.5)")


def test_bench_makes_200_distinct_good_images_from_50(data_root, tmp_path):
    """`iad dev bench` times a 200-image registration though no category has 200 good images."""
    from PIL import Image

    from iad_agent.eval.firsthour import _good_folder
    from iad_agent.imageio import content_hash, load_image

    goods = sorted((data_root / "mvtec_ad/hazelnut/train/good").glob("*.png"))[:3]
    _good_folder(tmp_path / "good", goods, 8)
    files = sorted((tmp_path / "good").iterdir())
    assert len(files) == 8 and {Image.open(f).size for f in files} == {Image.open(goods[0]).size}
    assert len({content_hash(load_image(f)) for f in files}) == 8  # none is a copy the registration would skip


def test_bench_registers_and_inspects_12_megapixel_photos_with_their_peak_memory(data_root, tmp_path):
    """`iad dev bench` registers good images as 4000×3000 photos and inspects one, each a fresh process,
    and records its wall time and peak resident memory."""
    import os
    import sys

    from PIL import Image

    from iad_agent.eval.firsthour import PHOTO_SIZE, photo_runs

    goods = sorted((data_root / "mvtec_ad/hazelnut/train/good").glob("*.png"))[:2]
    anomalous = data_root / "mvtec_ad/hazelnut/test/hole/001.png"
    runs = photo_runs(tmp_path, goods, anomalous, "nut", dict(os.environ))
    assert {Image.open(p).size for p in (tmp_path / "photos").iterdir()} == {PHOTO_SIZE}
    assert [r["what"] for r in runs] == ["register_photos_s", "inspect_photo_s"] and runs[0]["images"] == 2
    assert all(r["seconds"] > 0 for r in runs)
    if sys.platform.startswith("linux"):  # VmHWM: more than the interpreter alone, far less than the photos as floats
        assert all(100 < r["peak_mb"] < 1500 for r in runs), runs

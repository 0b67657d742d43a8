"""`iad batch --engine ray`: a Ray Data actor pool on a local Ray with 2 CPUs gives the local engine's answers."""

from __future__ import annotations

import json
import re
import shutil

import pytest
from typer.testing import CliRunner

from iad_agent import api
from iad_agent.cli import app
from iad_agent.scale.folder import ResultFile, find_images, inspect_to_files, read_parquet

pytestmark = pytest.mark.slow
ray = pytest.importorskip("ray")
runner = CliRunner()


@pytest.fixture(scope="module")
def local_ray():
    """One local Ray session (2 CPUs) for every test here: Ray's start-up is the slow part."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def setup(tmp_path_factory, data_root, hazelnut3_copy):
    ws = hazelnut3_copy(tmp_path_factory.mktemp("ws"))  # hazelnut from 3 good images
    folder = tmp_path_factory.mktemp("parts")
    for kind in ("good", "hole", "print"):
        for p in sorted((data_root / f"mvtec_ad/hazelnut/test/{kind}").glob("*.png"))[:1]:
            shutil.copy(p, folder / f"{kind}_{p.name}")
    (folder / "broken.png").write_bytes(b"GIF89a")
    return ws, folder


def _close(a, b) -> bool:
    """Equal structures, floats equal to 1e-4 relative."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_close(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    if isinstance(a, float) or isinstance(b, float):
        return a == pytest.approx(b, rel=1e-4, abs=1e-6)
    return a == b


def _same_observations(left: list[dict], right: list[dict]) -> bool:
    """Equal tool observations up to float rounding: a process without torch runs the packaged
    backbone on numpy (README: cold start), whose features match torch's to ~1e-6 relative, so
    the sixth digit of a tool's reading may differ between a Ray worker and this process."""
    def numbers_out(text: str) -> str:
        return re.sub(r"-?\d+(\.\d+)?", "#", text)

    return len(left) == len(right) and all(
        numbers_out(a["text"]) == numbers_out(b["text"]) and _close(a["data"], b["data"])
        and {k: v for k, v in a.items() if k not in ("text", "data")} == {k: v for k, v in b.items() if k not in ("text", "data")}
        for a, b in zip(left, right))


def _key(row: dict) -> dict:
    return {k: v for k, v in row.items() if k != "elapsed_ms"}


def test_ray_answers_equal_the_local_engine_and_resume_skips_what_is_done(local_ray, setup, tmp_path):
    ws, folder = setup
    images = find_images(folder)
    with ResultFile(tmp_path / "local.jsonl") as local:
        local_tally = inspect_to_files(images, api.load_product("hazelnut", ws), "embedded", [local])
    first = local.done[str(images[1])]
    full_first = next(d for d in map(json.loads, (tmp_path / "local.jsonl").read_text().splitlines()) if d["image"] == first["image"])
    with ResultFile(tmp_path / "ray.parquet") as earlier, ResultFile(tmp_path / "ray.jsonl") as earlier_full:
        earlier.write(first)  # an interrupted earlier run had done one image
        earlier_full.write(first, full_first)
    r = runner.invoke(app, ["batch", str(folder), "--product", "hazelnut", "--workspace", str(ws), "--engine", "ray",
                            "--out", str(tmp_path / "ray.parquet"), "--jsonl", str(tmp_path / "ray.jsonl"), "--actors", "2",
                            "--batch-size", "2", "--resume"])
    assert r.exit_code == local_tally.exit_code == 1, r.output
    assert "4 images: 2 anomalous, 1 normal, 0 no answer, 1 failed (1 done before, not inspected again)" in r.stdout
    ray_rows = {row["image"]: _key(row) for row in read_parquet(tmp_path / "ray.parquet")}
    local_rows = {row["image"]: _key(row) for row in local.done.values()}
    assert ray_rows == local_rows
    full_local = {d["image"]: d for d in map(json.loads, (tmp_path / "local.jsonl").read_text().splitlines())}
    full_ray = {d["image"]: d for d in map(json.loads, (tmp_path / "ray.jsonl").read_text().splitlines())}
    assert set(full_ray) == set(full_local)
    for image, d in full_ray.items():
        assert {k: v for k, v in d.items() if k not in ("elapsed_ms", "trace")} == \
            {k: v for k, v in full_local[image].items() if k not in ("elapsed_ms", "trace")}
        if "trace" in d:
            for step_l, step_r in zip(full_local[image]["trace"]["steps"], d["trace"]["steps"]):
                assert step_l["tool_calls"] == step_r["tool_calls"]
                assert _same_observations(step_l["observations"], step_r["observations"])

"""The inspection service through its HTTP API (FastAPI's TestClient on the real app, SQLite, files)."""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import time

import pytest
from PIL import Image
from typer.testing import CliRunner

from iad_agent import api

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient  # noqa: E402

from iad_agent.service.app import create_app  # noqa: E402
from iad_agent.service.settings import Settings  # noqa: E402

TIMINGS = {"elapsed_ms", "policy_ms", "tool_ms"}


@pytest.fixture(scope="module")
def hazelnut(data_root):
    return data_root / "mvtec_ad/hazelnut"


@pytest.fixture(scope="module")
def service(tmp_path_factory, hazelnut, hazelnut3_copy):
    """A running app (lifespan and all) over a workspace with hazelnut registered from 3 good images."""
    ws = hazelnut3_copy(tmp_path_factory.mktemp("ws"))
    from iad_agent.policies.embedded import COMPARE, HAND_SET_WEIGHTS, ZOOM
    from iad_agent.product import Product

    product = Product.load(ws / "products" / "hazelnut")  # the reports below show the tools at work: hand-set weights
    product.gate.w_zoom, product.gate.w_compare = HAND_SET_WEIGHTS[ZOOM], HAND_SET_WEIGHTS[COMPARE]
    product.save(ws / "products" / "hazelnut")
    settings = Settings(workspace=ws, workers=2, max_upload_bytes=2 * 1024 * 1024, max_pixels=4_000_000,
                        folder_roots=(hazelnut.parent.parent, ws))
    with TestClient(create_app(settings)) as client:
        client.settings = settings
        yield client


def _upload(path, name=None):
    return {"file": (name or path.name, path.read_bytes(), "image/png")}


def _count(settings, table="inspections") -> int:
    with sqlite3.connect(settings.data / "history.sqlite") as con:
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def _integrity(settings) -> str:
    with sqlite3.connect(settings.data / "history.sqlite") as con:
        return con.execute("PRAGMA integrity_check").fetchone()[0]


def _strip(value):
    """A JSON answer without wall-clock timings, which differ from run to run."""
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in TIMINGS}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def test_health_docs_and_migrations(service):
    assert service.get("/api/health").json()["status"] == "ok"
    docs = service.get("/docs")
    assert docs.status_code == 200 and "/static-offline-docs/swagger-ui-bundle.js" in docs.text  # no CDN
    assert service.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200
    assert "/api/inspect" in service.get("/openapi.json").json()["paths"]
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from iad_agent.service.db import Base

    with service.app.state.db.engine.connect() as con:  # the migrations build exactly the models' schema
        assert compare_metadata(MigrationContext.configure(con), Base.metadata) == []


def test_inspect_answers_equal_iad_inspect_json(service, hazelnut, tmp_path):
    from iad_agent.cli import app

    image = hazelnut / "test/hole/001.png"
    r = service.post("/api/inspect", files=_upload(image), data={"product": "hazelnut"})
    assert r.status_code == 201, r.text
    d = r.json()
    cli = CliRunner().invoke(app, ["inspect", str(image), "--product", "hazelnut", "--workspace", str(service.settings.workspace),
                                   "--json", "--heatmap", str(tmp_path / "h.png")])
    expected = json.loads(cli.stdout.strip().splitlines()[-1])
    assert d["anomaly_present"] is True and d["image"] == "001.png" and d["trace"]["query"] == "001.png"
    for key in ("image", "heatmap"):  # the uploaded name and a URL here; a path and a file there
        expected.pop(key)
        d.pop(key)
    expected.pop("trace")
    steps = _strip(d.pop("trace")["steps"])
    for step in steps:  # the service adds the tool images' URLs to each observation
        for obs in step["observations"]:
            assert len(obs.pop("images")) == obs["n_images"]
    cli_steps = _strip(json.loads(cli.stdout.strip().splitlines()[-1])["trace"]["steps"])
    assert steps == cli_steps
    assert {k: v for k, v in _strip(d).items() if k in expected} == _strip(expected)
    assert set(d) - set(expected) == {"id", "created_at", "filename", "product_version", "batch_id", "urls"}


def test_stored_files_and_dedup(service, hazelnut):
    image = hazelnut / "test/crack/000.png"
    first = service.post("/api/inspect", files=_upload(image), data={"product": "hazelnut"}).json()
    blobs_before = _count(service.settings, "blobs")
    second = service.post("/api/inspect", files=_upload(image, "again.png"), data={"product": "hazelnut"}).json()
    assert second["id"] != first["id"]
    for kind in ("image", "heatmap", "overlay", "thumbnail"):  # the same files: stored once
        assert second["urls"][kind] == first["urls"][kind]
    assert _count(service.settings, "blobs") == blobs_before + 1  # only the report differs (file name, time)
    heat = Image.open(io.BytesIO(service.get(first["heatmap"]).content))
    assert heat.mode == "L" and heat.size == (256, 256)
    report = service.get(first["urls"]["report"])
    assert report.headers["content-type"].startswith("text/html") and "perceptive_zoomer" in report.text
    assert "default-src 'none'" in report.headers["content-security-policy"]
    tool_images = [i for s in first["trace"]["steps"] for o in s["observations"] for i in o["images"]]
    assert tool_images and service.get(tool_images[0]["url"]).headers["content-type"] == "image/png"
    assert service.get("/blobs/../history.sqlite").status_code == 404
    assert service.get("/blobs/" + "0" * 64).status_code == 404
    page = service.get(first["urls"]["page"])
    assert page.status_code == 200 and "inspection-data" in page.text


def test_history_filters_and_pages(service, hazelnut):
    # good parts the product never saw (it holds train/good 000-002); test/good/000 sits at the threshold of
    # a 3-image product (flagged since the patch-length cap), so a third good part keeps two normals in the history
    for name in ("test/good/000.png", "test/good/001.png", "train/good/010.png"):
        assert service.post("/api/inspect", files=_upload(hazelnut / name), data={"product": "hazelnut"}).status_code == 201
    everything = service.get("/api/inspections").json()
    assert everything["total"] >= 5 and [i["id"] for i in everything["items"]] == sorted((i["id"] for i in everything["items"]), reverse=True)
    normal = service.get("/api/inspections", params={"verdict": "normal"}).json()
    anomalous = service.get("/api/inspections", params={"verdict": "anomalous"}).json()
    assert normal["total"] >= 2 and all(i["anomaly_present"] is False for i in normal["items"])
    assert normal["total"] + anomalous["total"] == everything["total"]
    page = service.get("/api/inspections", params={"limit": 2, "offset": 2}).json()
    assert [i["id"] for i in page["items"]] == [i["id"] for i in everything["items"][2:4]]
    today = everything["items"][0]["created_at"][:10]
    assert service.get("/api/inspections", params={"since": today, "until": today}).json()["total"] == everything["total"]
    assert service.get("/api/inspections", params={"until": "2000-01-01"}).json()["total"] == 0
    assert service.get("/api/inspections", params={"product": "walnut"}).json()["total"] == 0
    assert service.get("/api/inspections", params={"since": "yesterday"}).status_code == 422
    html = service.get("/history", params={"verdict": "normal"}).text
    assert html.count('class="thumb"') == min(normal["total"], 25) and "NORMAL" in html


def test_register_threshold_and_delete(service, hazelnut):
    goods = sorted((hazelnut / "train/good").glob("*.png"))[10:12]
    r = service.post("/api/products", data={"name": "nut2", "fpr": "0.05"},
                     files=[("files", (p.name, p.read_bytes(), "image/png")) for p in goods])
    assert r.status_code == 201, r.text
    p = r.json()
    assert p["images"] == 2 and len(p["curve"]) == 60 and "of good parts" in p["meaning"]
    preview = service.get("/api/products/nut2/threshold", params={"fpr": 0.2}).json()
    assert preview["threshold"] < p["threshold"] and preview["fpr"] == 0.2
    back = service.get("/api/products/nut2/threshold", params={"threshold": preview["threshold"]}).json()
    assert back["fpr"] == pytest.approx(0.2, rel=1e-3)
    before = service.post("/api/inspect", files=_upload(hazelnut / "test/good/000.png"), data={"product": "nut2"}).json()
    changed = service.patch("/api/products/nut2", json={"fpr": 0.2}).json()
    assert changed["threshold"] == pytest.approx(preview["threshold"]) and changed["version"] != p["version"]
    after = service.post("/api/inspect", files=_upload(hazelnut / "test/good/000.png"), data={"product": "nut2"}).json()
    assert after["threshold"] == pytest.approx(changed["threshold"]) != before["threshold"]  # reloaded: a new version
    assert after["product_version"] == changed["version"]
    assert service.get("/products/nut2").status_code == 200
    assert service.patch("/api/products/nut2", json={"fpr": 0.9}).status_code == 422
    assert service.patch("/api/products/nut2", json={}).status_code == 422
    assert service.delete("/api/products/nut2").status_code == 204
    assert service.get("/api/products/nut2").status_code == 404
    assert service.get("/api/inspections", params={"product": "nut2"}).json()["total"] == 2  # the history stays


def test_register_from_server_folder_and_its_limits(service, hazelnut, tmp_path):
    r = service.post("/api/products", data={"name": "nut3", "folder": str(hazelnut / "test/good")})
    assert r.status_code == 201, r.text
    assert r.json()["images"] == 2
    outside = service.post("/api/products", data={"name": "nut4", "folder": str(tmp_path)})
    assert outside.status_code == 403 and "may only read folders inside" in outside.json()["detail"]
    sneaky = service.post("/api/products", data={"name": "nut4", "folder": str(hazelnut / "../../../..")})
    assert sneaky.status_code == 403
    assert service.delete("/api/products/nut3").status_code == 204


def test_bad_input_gets_a_clear_4xx_and_stores_nothing(service, hazelnut, tmp_path):
    settings = service.settings
    before = _count(settings), _count(settings, "blobs")
    good = (hazelnut / "test/good/000.png").read_bytes()
    bomb = io.BytesIO()
    Image.new("L", (4000, 4000)).save(bomb, format="PNG")  # 16 MP of zeros: a few KB on the wire
    cases = {
        "text": ({"file": ("notes.png", b"this is not an image", "image/png")}, {"product": "hazelnut"}, 422, "notes.png: not a readable image"),
        "truncated": ({"file": ("cut.png", good[: len(good) // 2], "image/png")}, {"product": "hazelnut"}, 422, "cut.png: image data is corrupt or truncated"),
        "empty": ({"file": ("empty.png", b"", "image/png")}, {"product": "hazelnut"}, 422, "empty.png: empty file"),
        "bomb": ({"file": ("bomb.png", bomb.getvalue(), "image/png")}, {"product": "hazelnut"}, 413, "above this service's limit"),
        "huge": ({"file": ("big.png", b"\0" * (3 * 1024 * 1024), "image/png")}, {"product": "hazelnut"}, 413, ""),
        "unknown product": (_upload(hazelnut / "test/good/000.png"), {"product": "walnut"}, 404, "'walnut' is not registered"),
        "traversal product": (_upload(hazelnut / "test/good/000.png"), {"product": "../hazelnut"}, 422, "invalid product name"),
        "odd product": (_upload(hazelnut / "test/good/000.png"), {"product": "haz nut;rm"}, 422, "invalid product name"),
        "bad policy": (_upload(hazelnut / "test/good/000.png"), {"product": "hazelnut", "policy": "oracle"}, 422, "unknown policy"),
        "traversal filename": ({"file": ("../../etc/passwd", b"x" * 100, "image/png")}, {"product": "hazelnut"}, 422, "passwd: not a readable image"),
    }
    for name, (files, data, status, message) in cases.items():
        r = service.post("/api/inspect", files=files, data=data)
        assert r.status_code == status, (name, r.text)
        assert message in r.json()["detail"], (name, r.text)
    for name in ("../evil", "a/b", "", "x" * 80, "naïve"):
        r = service.post("/api/products", data={"name": name}, files=[("files", ("a.png", good, "image/png"))])
        assert r.status_code == 422, (name, r.text)
    streamed = service.post("/api/inspect", content=(b"\0" * 100_000 for _ in range(40)),  # no Content-Length
                            headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert streamed.status_code == 413 and "above this service's limit" in streamed.json()["detail"]
    assert service.get("/api/products/..%2F..%2Fetc").status_code == 404
    assert service.post("/api/products", data={"name": "x"}, files=[("files", ("a.txt", b"no", "image/png"))]).status_code == 422
    assert (_count(settings), _count(settings, "blobs")) == before and _integrity(settings) == "ok"
    assert api.list_products(settings.workspace) == ["hazelnut"]
    assert not any((settings.data / "tmp").iterdir())  # uploads are not left behind


def test_batch_progress_cancel_resume_results(service, hazelnut, tmp_path_factory):
    folder = tmp_path_factory.mktemp("line", numbered=True)
    for kind in ("good", "hole", "crack", "print"):
        for p in sorted((hazelnut / f"test/{kind}").glob("*.png")):
            shutil.copy(p, folder / f"{kind}_{p.name}")
    (folder / "zz_broken.png").write_bytes(b"GIF89a")
    # a folder outside the allowed roots, an unknown product, an empty folder
    assert service.post("/api/batches", json={"product": "hazelnut", "folder": "/etc"}).status_code == 403
    assert service.post("/api/batches", json={"product": "walnut", "folder": str(folder)}).status_code == 404
    empty = service.settings.workspace / "empty_line"  # inside an allowed root
    empty.mkdir()
    r = service.post("/api/batches", json={"product": "hazelnut", "folder": str(empty)})
    assert r.status_code == 422 and "no images found" in r.json()["detail"]
    line = service.settings.workspace / "line"  # inside an allowed root
    shutil.copytree(folder, line)
    started = service.post("/api/batches", json={"product": "hazelnut", "folder": str(line)})
    assert started.status_code == 202, started.text
    batch = started.json()
    assert batch["total"] == 9 and batch["status"] == "running"
    service.post(f"/api/batches/{batch['id']}/cancel")
    state = _wait(service, batch["id"], ("cancelled", "done"))
    resumed = service.post(f"/api/batches/{batch['id']}/resume").json()
    assert resumed["status"] == "running"
    state = _wait(service, batch["id"], ("done",))
    assert state["done"] == 8 and state["failed"] == 1 and state["anomalous"] >= 4 and state["progress"] == 1.0
    rows = service.get(f"/api/batches/{batch['id']}/results").json()
    assert [r["status"] for r in rows].count("done") == 8 and "zz_broken.png" in rows[-1]["error"]
    history = service.get("/api/inspections", params={"batch": batch["id"], "limit": 100}).json()
    assert history["total"] == 8 and len({i["filename"] for i in history["items"]}) == 8  # nothing twice
    csv_text = service.get(f"/api/batches/{batch['id']}/results", params={"format": "csv"}).text
    assert csv_text.splitlines()[0].startswith("image,product,policy,anomaly_present") and len(csv_text.splitlines()) == 10
    assert service.post(f"/api/batches/{batch['id']}/resume").status_code == 409
    assert "batch-table" in service.get("/batches").text


def _wait(service, batch_id, statuses, timeout=180):
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = service.get(f"/api/batches/{batch_id}").json()
        if state["status"] in statuses:
            return state
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} still {state['status']} after {timeout} s")


def test_api_key_protects_everything_but_health(tmp_path):
    settings = Settings(workspace=tmp_path, workers=1, api_key="s3cret")
    with TestClient(create_app(settings)) as client:
        assert client.get("/api/health").status_code == 200
        assert client.get("/api/products").status_code == 401
        assert client.get("/api/products", headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get("/api/products", headers={"X-API-Key": "s3cret"}).json() == []
        assert client.get("/api/products", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/openapi.json").status_code == 401
        page = client.get("/history", headers={"Accept": "text/html"}, follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login?next=/history"
        assert client.post("/login", data={"key": "nope", "next": "/history"}).status_code == 401
        login = client.post("/login", data={"key": "s3cret", "next": "/history"}, follow_redirects=False)
        assert login.status_code == 303 and "s3cret" not in login.headers["set-cookie"]
        assert client.get("/history").status_code == 200 and client.get("/api/products").status_code == 200

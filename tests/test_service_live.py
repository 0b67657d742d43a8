"""The service as it runs: `iad serve` in its own process, a real Chromium, load, and `kill -9` mid-batch.

Screenshots of the browser path are kept in ``test-artifacts/`` (git-ignored).
"""

from __future__ import annotations

import base64
import shutil
import signal
import sqlite3
import time
from pathlib import Path

import httpx
import pytest

from iad_agent import api

pytestmark = pytest.mark.slow
pytest.importorskip("fastapi")
from iad_agent.service.bench import run_load, start_server  # noqa: E402

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def line(tmp_path_factory, data_root):
    """A server-side folder of parts (the batch's input), and the good images to register from."""
    root = tmp_path_factory.mktemp("site")
    parts = root / "line"
    parts.mkdir()
    test = data_root / "mvtec_ad/hazelnut/test"
    for kind in ("good", "hole", "crack"):
        for p in sorted((test / kind).glob("*.png")):
            shutil.copy(p, parts / f"{kind}_{p.name}")
    goods = sorted((data_root / "mvtec_ad/hazelnut/train/good").glob("*.png"))[:3]
    return root, parts, goods


@pytest.fixture(scope="module")
def registered(tmp_path_factory, line):
    """A workspace with hazelnut registered from 2 good images (tests copy it: registering costs seconds)."""
    ws = tmp_path_factory.mktemp("template")
    api.register("hazelnut", line[2][:2], workspace=ws)
    return ws


@pytest.fixture(scope="module")
def server(tmp_path_factory, line, registered):
    root, _, _ = line
    ws = tmp_path_factory.mktemp("ws")
    shutil.copytree(registered, ws, dirs_exist_ok=True)
    with start_server(ws, "--folder-root", str(root), "--workers", "2", log=ws / "serve.log") as (url, _):
        yield url, ws


def test_browser_user_path_register_inspect_history_threshold_batch(server, line, data_root):
    sync_api = pytest.importorskip("playwright.sync_api")
    url, ws = server
    root, parts, goods = line
    ARTIFACTS.mkdir(exist_ok=True)
    hole = data_root / "mvtec_ad/hazelnut/test/hole/001.png"
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        problems: list[str] = []
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)

        # register a product by giving it good images
        page.goto(f"{url}/products")
        page.get_by_label("Name").fill("hazel")
        page.set_input_files("#reg-files", [str(p) for p in goods])
        assert "3 files" in page.locator("#register-drop .chosen").inner_text()
        page.get_by_role("button", name="Register").click()
        sync_api.expect(page.locator("#register-status")).to_contain_text("Registered hazel: 3 good images", timeout=120_000)
        page.screenshot(path=str(ARTIFACTS / "1-registered.png"), full_page=True)
        # the trace's tool images need tools that are on: the weights learned from these 3 images switch
        # both off, so the product gets the hand-set ones, as a new version (the server reloads it)
        from iad_agent.policies.embedded import COMPARE, HAND_SET_WEIGHTS, ZOOM
        from iad_agent.workspace import Workspace

        workspace = Workspace(ws)
        with workspace.lock("hazel"):
            product = workspace.load("hazel")
            product.gate.w_zoom, product.gate.w_compare = HAND_SET_WEIGHTS[ZOOM], HAND_SET_WEIGHTS[COMPARE]
            product.save(workspace.product_dir("hazel"))

        # inspect by dropping an image on the drop zone
        page.goto(f"{url}/?product=hazel")
        data = base64.b64encode(hole.read_bytes()).decode()
        page.evaluate("""([data, name]) => {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: "image/png"}));
            document.querySelector("#inspect-drop").dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true}));
        }""", [data, "hole.png"])
        assert "hole.png" in page.locator("#inspect-drop .chosen").inner_text()
        page.get_by_role("button", name="Inspect").click()
        verdict = page.locator("#result .big .verdict")
        sync_api.expect(verdict).to_have_text("ANOMALOUS", timeout=120_000)
        sync_api.expect(page.locator("#result")).to_contain_text("Confidence")
        assert page.locator("#result .trace > li").count() >= 2
        calls = [c for c in page.locator("#result .trace p code").all_inner_texts() if "(" in c and not c.startswith("{")]
        imaging = [c for c in calls if c.startswith(("perceptive_zoomer", "comparative_retriever", "anomaly_map"))]
        assert calls and imaging, calls  # the hole is uncertain enough for the zoom
        assert page.locator("#result .trace img").count() >= len(imaging)  # each tool's images, step by step
        page.wait_for_function("() => [...document.querySelectorAll('#result img')].every(i => i.complete && i.naturalWidth > 0)")
        page.screenshot(path=str(ARTIFACTS / "2-inspected.png"), full_page=True)

        # the history shows it, with a thumbnail, and filters
        page.get_by_role("link", name="History").click()
        rows = page.locator("#history-table tbody tr")
        assert rows.count() == 1 and "hole.png" in rows.first.inner_text()
        assert page.evaluate("document.querySelector('#history-table img.thumb').naturalWidth") > 0
        page.get_by_label("Verdict").select_option("normal")
        page.get_by_role("button", name="Filter").click()
        assert page.locator("#history-table tbody tr").count() == 0 and "verdict=normal" in page.url
        page.screenshot(path=str(ARTIFACTS / "3-history.png"), full_page=True)
        rows = page.goto(f"{url}/history") and page.locator("#history-table tbody tr")
        rows.first.locator("a").first.click()
        sync_api.expect(page.locator("#result .big .verdict")).to_have_text("ANOMALOUS")

        # the product page's threshold control says what a false-alarm rate means, and saves it
        page.goto(f"{url}/products/hazel")
        out = page.locator("#threshold-out")
        before = out.inner_text()
        assert "5.0 %" in before or "4." in before or "5." in before
        slider = page.get_by_label("Expected false-alarm rate on good parts")
        for _ in range(8):
            slider.press("ArrowRight")
        after = out.inner_text()
        assert after != before and "good parts flagged" in after
        page.get_by_role("button", name="Save threshold").click()
        sync_api.expect(page.locator("#threshold-status")).to_contain_text("Saved: threshold", timeout=60_000)
        page.screenshot(path=str(ARTIFACTS / "4-threshold.png"), full_page=True)

        # a batch over the server-side folder, with its progress
        page.goto(f"{url}/batches")
        page.get_by_label("Folder on the server").fill(str(parts))
        page.get_by_role("button", name="Start batch").click()
        sync_api.expect(page.locator("#batch-status")).to_contain_text("Started: 6 images", timeout=60_000)
        sync_api.expect(page.locator("#batch-table tbody tr").first).to_have_attribute("data-status", "done", timeout=180_000)
        assert "6 / 6" in page.locator("#batch-table tbody tr").first.inner_text()
        page.screenshot(path=str(ARTIFACTS / "5-batch.png"), full_page=True)

        # small accessibility checks: every image has a text alternative, every field a label
        assert page.evaluate("[...document.querySelectorAll('img')].every(i => i.alt)")
        for path in ("/", "/products", "/history", "/batches"):
            page.goto(url + path)
            unlabeled = page.evaluate("""[...document.querySelectorAll('input:not([type=hidden]), select')]
                .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label')).map(e => e.id || e.name)""")
            assert unlabeled == [], (path, unlabeled)
        browser.close()
    assert problems == []


def test_50_clients_no_errors_no_lost_records(server, data_root):
    """A short version of `python -m iad_agent.service.bench` (whose 60-s figures are in the README)."""
    url, _ = server
    images = sorted((data_root / "mvtec_ad/hazelnut/test").glob("*/*.png"))
    result = run_load(url, "hazelnut", images, clients=50, duration=5, policy="knn")  # knn: the same path, cheaper
    assert result["errors"] == 0, result["error_samples"]
    assert result["lost_records"] == 0 and result["extra_records"] == 0
    assert result["ok"] >= 50


def _sql(db: Path, query: str):
    with sqlite3.connect(db) as con:
        return con.execute(query).fetchall()


def test_sigkill_mid_batch_keeps_history_and_the_batch_resumes(tmp_path, line, registered):
    root, parts, goods = line
    ws = tmp_path / "ws"
    shutil.copytree(registered, ws)
    db = ws / "service" / "history.sqlite"
    with start_server(ws, "--folder-root", str(root), "--workers", "1", log=tmp_path / "serve.log") as (url, proc):
        first = httpx.post(f"{url}/api/inspect", files={"file": ("a.png", goods[2].read_bytes(), "image/png")},
                           data={"product": "hazelnut", "policy": "knn"}, timeout=120).json()
        batch = httpx.post(f"{url}/api/batches", json={"product": "hazelnut", "folder": str(parts), "policy": "knn"},
                           timeout=60).json()
        deadline = time.time() + 120
        while httpx.get(f"{url}/api/batches/{batch['id']}").json()["processed"] < 2 and time.time() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _sql(db, "PRAGMA integrity_check") == [("ok",)]
    done_at_kill = _sql(db, f"SELECT count(*) FROM batch_items WHERE batch_id='{batch['id']}' AND status='done'")[0][0]
    assert 2 <= done_at_kill < 6
    with start_server(ws, "--folder-root", str(root), "--workers", "1", log=tmp_path / "serve.log") as (url, _):
        state = httpx.get(f"{url}/api/batches/{batch['id']}").json()
        assert state["status"] == "interrupted" and state["done"] == done_at_kill
        assert httpx.get(f"{url}/api/inspections/{first['id']}").json()["anomaly_present"] == first["anomaly_present"]
        heat = httpx.get(url + first["heatmap"])
        assert heat.status_code == 200 and heat.content[:4] == b"\x89PNG"
        assert httpx.post(f"{url}/api/batches/{batch['id']}/resume").json()["status"] == "running"
        deadline = time.time() + 180
        while (state := httpx.get(f"{url}/api/batches/{batch['id']}").json())["status"] == "running" and time.time() < deadline:
            time.sleep(0.2)
        assert state["status"] == "done" and state["done"] == 6 and state["failed"] == 0
        history = httpx.get(f"{url}/api/inspections", params={"batch": batch["id"], "limit": 100}).json()
        assert history["total"] == 6 and len({i["filename"] for i in history["items"]}) == 6  # none lost, none twice
    assert _sql(db, "PRAGMA integrity_check") == [("ok",)]
    assert _sql(db, "SELECT count(*) FROM inspections")[0][0] == 7

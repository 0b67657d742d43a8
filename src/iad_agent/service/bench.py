"""Load benchmark of the inspection service: N concurrent clients for T seconds on loopback.

    python -m iad_agent.service.bench --clients 50 --duration 60

starts ``iad serve`` on a free port with a fresh workspace (hazelnut registered from 10 good
images of ``shared/data``), warms it up (4 inspections, not counted: the workers load their
models), has each client upload test images to ``POST /api/inspect`` one after the other for
the duration, then checks the history: every answer the clients got is
stored (no lost records) and nothing else is. Prints the figures as JSON (errors, lost
records, requests, throughput, p50 / p95 / max latency). ``--url`` measures a running
service instead (``--product`` must be registered there; ``$IAD_API_KEY`` is sent if set).

:func:`start_server` and :func:`run_load` are also what the service's live tests use.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen | None = None, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"iad serve exited with status {proc.returncode}")
        try:
            if httpx.get(f"{url}/api/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} did not become healthy in {timeout:.0f} s")


@contextlib.contextmanager
def start_server(workspace: Path, *args: str, port: int | None = None, env: dict[str, str] | None = None,
                 log: Path | None = None) -> Iterator[tuple[str, subprocess.Popen]]:
    """Run ``iad serve --workspace WORKSPACE ARGS`` in a child process; yields ``(url, process)``."""
    port = port or free_port()
    cmd = [sys.executable, "-c", "from iad_agent.cli import app; app()", "serve", "--workspace", str(workspace),
           "--port", str(port), *args]
    out = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if log:
            out.close()


async def _client(http: httpx.AsyncClient, product: str, policy: str, images: Sequence[tuple[str, bytes]], stop: float,
                  start_at: int, latencies: list[float], ids: list[int], errors: list[str]) -> None:
    i = start_at
    while time.perf_counter() < stop:
        name, data = images[i % len(images)]
        i += 1
        t0 = time.perf_counter()
        try:
            r = await http.post("/api/inspect", files={"file": (name, data, "image/png")}, data={"product": product, "policy": policy})
        except httpx.HTTPError as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            continue
        if r.status_code == 201:
            latencies.append(time.perf_counter() - t0)
            ids.append(r.json()["id"])
        else:
            errors.append(f"{r.status_code}: {r.text[:200]}")


def run_load(url: str, product: str, images: Sequence[Path], clients: int = 50, duration: float = 60,
             api_key: str | None = None, policy: str = "embedded") -> dict[str, Any]:
    """``clients`` concurrent clients uploading ``images`` for ``duration`` seconds, then a history check."""
    payload = [(p.name, p.read_bytes()) for p in images]
    headers = {"X-API-Key": api_key} if api_key else {}
    latencies: list[float] = []
    ids: list[int] = []
    errors: list[str] = []

    async def main() -> float:
        limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
        async with httpx.AsyncClient(base_url=url, headers=headers, limits=limits, timeout=600) as http:
            start = time.perf_counter()
            await asyncio.gather(*(_client(http, product, policy, payload, start + duration, k, latencies, ids, errors)
                                   for k in range(clients)))
            return time.perf_counter() - start

    async def warm_up() -> None:  # every worker loads its models and the product before the clock starts
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=600) as http:
            replies = await asyncio.gather(*(http.post("/api/inspect", files={"file": (name, data, "image/png")},
                                                       data={"product": product, "policy": policy})
                                             for name, data in (payload * 4)[:4]))
            for r in replies:
                r.raise_for_status()

    asyncio.run(warm_up())
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        before = http.get("/api/inspections", params={"product": product, "limit": 1}).json()["total"]
    wall = asyncio.run(main())
    with httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        after = http.get("/api/inspections", params={"product": product, "limit": 1}).json()["total"]
        missing = [i for i in ids if http.get(f"/api/inspections/{i}").status_code != 200]
    lat = sorted(latencies)
    return {
        "clients": clients, "policy": policy, "duration_s": round(wall, 1), "requests": len(ids) + len(errors), "ok": len(ids),
        "errors": len(errors), "error_samples": errors[:5],
        "lost_records": len(missing) + max(0, len(ids) - (after - before)), "extra_records": max(0, (after - before) - len(ids)),
        "throughput_per_s": round(len(ids) / wall, 2) if wall else 0.0,
        "latency_p50_s": round(statistics.median(lat), 3) if lat else None,
        "latency_p95_s": round(lat[min(len(lat) - 1, int(0.95 * len(lat)))], 3) if lat else None,
        "latency_max_s": round(lat[-1], 3) if lat else None,
    }


def _test_images(data: Path) -> list[Path]:
    test = data / "mvtec_ad/hazelnut/test"
    return sorted(test.glob("*/*.png"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=60, help="seconds of load")
    parser.add_argument("--url", help="a running service (default: start one with a fresh workspace)")
    parser.add_argument("--product", default="hazelnut")
    parser.add_argument("--workers", type=int, help="iad serve --workers (default: its own)")
    parser.add_argument("--policy", default="embedded", help="policy of every inspection (embedded, knn, ...)")
    args = parser.parse_args(argv)
    from iad_agent.datasets import data_root

    images = _test_images(data_root())
    if args.url:
        result = run_load(args.url, args.product, images, args.clients, args.duration, os.environ.get("IAD_API_KEY"),
                          args.policy)
    else:
        from iad_agent import api
        from iad_agent.product import list_images

        with tempfile.TemporaryDirectory(prefix="iad-bench-") as tmp:
            ws = Path(tmp)
            goods = list_images(data_root() / "mvtec_ad/hazelnut/train/good")
            api.register(args.product, goods[:: max(1, len(goods) // 10)][:10], workspace=ws)
            extra = ["--workers", str(args.workers)] if args.workers else []
            with start_server(ws, *extra) as (url, _):
                result = run_load(url, args.product, images, args.clients, args.duration, policy=args.policy)
    result.update(cpus=os.cpu_count(), date=time.strftime("%Y-%m-%d"))
    print(json.dumps(result, indent=1))
    return 0 if result["errors"] == 0 and result["lost_records"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

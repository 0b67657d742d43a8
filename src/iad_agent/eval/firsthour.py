"""The first-hour figures: registration and cold-start times, quiet and beside a busy process.

``iad dev bench`` runs the README's commands as a new user does — each a fresh ``iad`` process —
and times them on the wall clock: ``register_s`` (50 good images, and 200: the 50 and their
mirrored and rotated copies), ``cold_start_s``
(one ``iad inspect`` of an anomalous image, from process start to exit), ``products_s``
(``iad products``). Each is measured on the machine as it is ("quiet" when nothing else runs)
and again beside one busy process (a pure-Python loop on one core, the neighbour of issue 9's
report), with the load average recorded next to it. Then, quiet, the size of a phone or machine-vision
photo: ``register_photos_s`` (4 good images of 4000×3000 px, JPEG) and ``inspect_photo_s`` (one more),
with each process's peak resident memory (``peak_mb``). Not a timed test: the figures depend on
the machine, so they are recorded, not asserted.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

_BUSY = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    sum(i * i for i in range(10000))\n"


@contextmanager
def busy_neighbour(enabled: bool = True):
    """One other process keeping one core busy while the block runs (none when not ``enabled``)."""
    proc = subprocess.Popen([sys.executable, "-c", _BUSY]) if enabled else None  # noqa: S603 - our own interpreter
    try:
        if proc is not None:
            time.sleep(1.0)  # let it show in the load
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


#: Run as ``python -c``: the CLI, and at exit the process's peak resident memory (``VmHWM``) on stderr.
_CLI = ("import atexit, sys\n"
        "def _peak():\n"
        "    with open('/proc/self/status') as f:\n"
        "        kb = next((line.split()[1] for line in f if line.startswith('VmHWM')), '0')\n"
        "    sys.stderr.write(f'\\niad-peak-kb {kb}\\n')\n"
        "if sys.platform.startswith('linux'):\n"
        "    atexit.register(_peak)\n"
        "from iad_agent.cli import app\n"
        "app()\n")


def _iad(*args: str, env: dict[str, str], peak: dict | None = None) -> float:
    """Run ``iad ARGS`` as a new process; its wall time in seconds (it must succeed: exit 0 or 1).

    ``peak``: filled with ``peak_mb``, the process's peak resident memory (Linux; absent elsewhere).
    """
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", _CLI, *args], env=env,  # noqa: S603
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    elapsed = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise RuntimeError(f"iad {' '.join(args)} failed ({done.returncode}): {done.stderr[-2000:]}")
    kb = [line.split()[1] for line in done.stderr.splitlines() if line.startswith("iad-peak-kb ")]
    if peak is not None and kb and int(kb[-1]) > 0:
        peak["peak_mb"] = round(int(kb[-1]) / 1024)
    return round(elapsed, 2)


#: The photo size ``run`` registers and inspects (width, height): a 12-megapixel camera's.
PHOTO_SIZE = (4000, 3000)


def _photos(folder: Path, sources: list[Path], size: tuple[int, int] = PHOTO_SIZE) -> list[Path]:
    """``sources`` resized to ``size`` and saved as JPEG (quality 92) in ``folder``: the photos to register."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in sources:
        with Image.open(p) as img:
            path = folder / f"{p.parent.name}_{p.stem}.jpg"
            img.convert("RGB").resize(size, Image.Resampling.BICUBIC).save(path, quality=92)
        out.append(path)
    return out


def _weights_cached() -> bool:
    """Whether the default backbone's numpy weights cache (:mod:`iad_agent.vision.lite_numpy`) exists."""
    from iad_agent.vision.features import FeatureConfig, _STAGE_BLOCKS
    from iad_agent.vision.lite_numpy import _cache_path

    config = FeatureConfig()
    try:
        return _cache_path(config.backbone, max(_STAGE_BLOCKS[config.backbone][s] for s in config.strides)).is_file()
    except (OSError, ImportError):
        return False


def _good_folder(folder: Path, goods: list[Path], n: int) -> None:
    """``n`` good images in ``folder``: links to ``goods``, then their mirrored and rotated copies.

    No category of the shared data has 200 good images; the copies are distinct images of the
    same product and size (registering the same image twice is a no-op, so plain copies would not
    do).
    """
    from PIL import Image

    folder.mkdir()
    for p in goods[:n]:
        os.symlink(p, folder / p.name)
    turns = (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_180,
             Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_270, Image.Transpose.TRANSPOSE)
    for i in range(max(0, n - len(goods))):
        src, turn = goods[i % len(goods)], turns[i // len(goods) % len(turns)]
        with Image.open(src) as img:
            img.transpose(turn).save(folder / f"{src.stem}_{turn.name.lower()}.png")


def photo_runs(tmp: Path, goods: list[Path], anomalous: Path, category: str, env: dict[str, str],
               progress: Callable[[str], None] | None = None) -> list[dict]:
    """``goods`` registered as :data:`PHOTO_SIZE` photos, then ``anomalous`` inspected at that size, each a fresh
    ``iad`` process: ``register_photos_s`` and ``inspect_photo_s`` runs with their wall time and peak memory."""
    if progress:
        progress(f"register {len(goods)} photos of {PHOTO_SIZE[0]}×{PHOTO_SIZE[1]} px")
    _photos(tmp / "photos", goods)
    query = _photos(tmp / "query", [anomalous])[0]
    ws = tmp / "ws-photos"
    runs = []
    for what, args in (("register_photos_s", ["register", category, "--normals", str(tmp / "photos"), "--workspace", str(ws)]),
                       ("inspect_photo_s", ["inspect", str(query), "--product", category, "--workspace", str(ws),
                                            "--out-dir", str(tmp / "out")])):
        load, peak = os.getloadavg()[0], {}
        seconds = _iad(*args, env=env, peak=peak)
        runs.append({"what": what, "images": len(goods) if what == "register_photos_s" else 1, "neighbour": "quiet",
                     "seconds": seconds, "load_before": round(load, 2), "size": list(PHOTO_SIZE), **peak})
    return runs


def run(data_root: Path, category: str = "hazelnut", repeats: int = 3, sizes: tuple[int, ...] = (50, 200),
        progress: Callable[[str], None] | None = None, photos: int = 4) -> dict:
    """Measure the first-hour figures on ``data_root/mvtec_ad/<category>`` (see the module docstring);
    ``photos``: how many good images to register at :data:`PHOTO_SIZE` (0: none)."""
    goods = sorted((data_root / "mvtec_ad" / category / "train" / "good").glob("*.png"))
    anomalous = sorted(p for p in (data_root / "mvtec_ad" / category / "test").glob("*/*.png") if p.parent.name != "good")[0]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    out: dict = {"category": category, "cores": os.cpu_count(), "python": sys.version.split()[0], "runs": [],
                 # the packaged backbone's numpy weights are cached per machine; the first registration
                 # without them imports torch once to write them (~2 s): say which case was measured
                 "weights_cache_before": _weights_cached()}
    tmp = Path(tempfile.mkdtemp(prefix="iad-bench-"))
    try:
        for busy in (False, True):
            label = "busy" if busy else "quiet"
            with busy_neighbour(busy):
                for n in sizes:
                    folder = tmp / f"good{n}"
                    if not folder.exists():
                        _good_folder(folder, goods, n)
                    ws = tmp / f"ws-{label}-{n}"
                    if progress:
                        progress(f"register {n} images ({label})")
                    load = os.getloadavg()[0]
                    seconds = _iad("register", category, "--normals", str(folder), "--workspace", str(ws), env=env)
                    out["runs"].append({"what": "register_s", "images": n, "neighbour": label, "seconds": seconds,
                                        "load_before": round(load, 2)})
                ws = tmp / f"ws-{label}-{sizes[0]}"
                for what, args in (("cold_start_s", ["inspect", str(anomalous), "--product", category, "--workspace",
                                                     str(ws), "--out-dir", str(tmp / "out")]),
                                   ("products_s", ["products", "--workspace", str(ws)])):
                    if progress:
                        progress(f"{what} ({label})")
                    load = os.getloadavg()[0]
                    times = [_iad(*args, env=env) for _ in range(repeats)]
                    out["runs"].append({"what": what, "neighbour": label, "seconds": statistics.median(times),
                                        "all": times, "load_before": round(load, 2)})
        if photos:
            out["runs"] += photo_runs(tmp, goods[:photos], anomalous, category, env, progress)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    for r in out["runs"]:
        key = r["what"] + ("" if r["what"] != "register_s" else f"_{r['images']}") + f"_{r['neighbour']}"
        out[key] = r["seconds"]
        if "peak_mb" in r:
            out[key.replace("_s_", "_peak_mb_")] = r["peak_mb"]
    return out

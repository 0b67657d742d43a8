"""Benchmark harness: k-shot evaluation of several policies side by side, resumable.

A *group* is one ``(dataset, category, shots, seed)``: its k good references are drawn with
the seed, ONE product is registered from them (threshold set from those good images alone,
never from the test split), and every policy inspects every test image against it. The
query's features, global look and heat map are computed once per image and shared by the
policies; each policy's latency is that shared part plus its own agent loop, so the figures
stay per-policy end-to-end times.

Where the good references come from (:func:`split_dataset`):

* ``train``: datasets with a ``train`` split (MVTec AD layout, LOCO, VisA): references from
  the normal training images, the test split is the test set. A category without normal test
  images (our MVTec LOCO juice_bottle copy) uses its ``validation/good`` images as the normal
  test images.
* ``held-out normals``: datasets without a train split (Magnetic Tile, KolektorSDD): a fixed
  pool of ``min(max_normals, n_normal // 2)`` normal images, evenly spaced over the sorted
  file names, is set aside as the reference pool and never tested; everything else is the
  test set, the same for every shots and seed.
* ``given``: datasets whose samples carry their own good reference (DeepPCB's template): each
  test image is inspected against a product registered from its own template only; such a
  group has ``shots="given"`` and runs once.

``shots="all"`` means the whole pool, capped at ``max_normals``. When k covers the whole pool,
every seed would draw the same set, so only the first seed is run.

Every finished group appends one JSON line per policy to ``records.jsonl`` (written, flushed
and fsynced per line); ``--resume`` skips the ``(dataset, category, shots, seed, policy)``
keys already there. ``metrics.json``, ``samples.csv`` and ``report.md`` are regenerated from
that file (see :mod:`iad_agent.eval.report`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import resource
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from iad_agent.datasets import READERS, DatasetError, data_root, list_categories, load_dataset
from iad_agent.eval import metrics
from iad_agent.imageio import load_image, save_png
from iad_agent.inspector import Inspector, InspectionResult
from iad_agent.policies import VLMOptions, policy_label, resolve_policy
from iad_agent.product import Product
from iad_agent.tools.cache import ToolCache, cached_tools
from iad_agent.types import Box, Sample

if TYPE_CHECKING:
    from iad_agent.vision.features import FeatureConfig

log = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"
SHOTS_ALL = "all"
SHOTS_GIVEN = "given"
#: Pixel metrics are computed on maps and masks downsampled to this long side.
PIXEL_SIDE = 256
#: Each dataset's folder under :func:`iad_agent.datasets.data_root`.
DATASET_FOLDERS = {
    "mvtec": "mvtec_ad",
    "loco": "mvtec_loco",
    "visa": "visa",
    "visa_resplit": "visa_resplit",
    "mpdd": "mpdd",
    "btad": "btad",
    "magnetic_tile": "magnetic_tile",
    "deeppcb": "deeppcb",
    "kolektor": "kolektor",
}


# ----------------------------------------------------------------------------- configuration


@dataclass
class EvalConfig:
    """What to evaluate.

    Attributes:
        datasets: ``(reader name, root folder)`` pairs.
        categories: categories to run (those present in each dataset); ``None`` = all.
        shots: k values (``int``) and/or ``"all"``.
        seeds: number of seeds (``0 .. seeds-1``) for drawing the references.
        policies: policy names (``knn``, ``embedded``, ``embedded-no-zoom``, ``openai``, ...).
        disable_tools: tools left out of every tool-using policy (labels get ``-no-<tool>``).
        max_test: cap on the test images per category, evenly spaced within each class (``None`` = all).
        max_normals: cap on the references for ``shots="all"`` and on a held-out pool.
        fpr: false-alarm rate the products' thresholds are set for.
        policy_options: VLM backend settings, passed to :func:`iad_agent.policies.resolve_policy`.
        max_steps: the agent loop's step budget.
        examples: save best/worst example tiles for the first seed's records.
        features: the feature extractor of every product (``iad eval --backbone``); None = the default.
    """

    datasets: list[tuple[str, Path]]
    categories: list[str] | None = None
    shots: list[int | str] = field(default_factory=lambda: [1])
    seeds: int = 1
    policies: list[str] = field(default_factory=lambda: ["knn", "embedded"])
    disable_tools: tuple[str, ...] = ()
    max_test: int | None = None
    max_normals: int = 50
    fpr: float = 0.05
    policy_options: VLMOptions = field(default_factory=VLMOptions)
    max_steps: int = 6
    examples: bool = True
    features: FeatureConfig | None = None


def default_root(dataset: str) -> Path:
    """The dataset's folder under the shared data root (``mvtec`` -> ``<data>/mvtec_ad``)."""
    if dataset not in READERS:
        raise ValueError(f"unknown dataset {dataset!r}; valid names: {', '.join(sorted(READERS))}")
    return data_root() / DATASET_FOLDERS.get(dataset, dataset)


def available_datasets() -> list[tuple[str, Path]]:
    """Every dataset whose folder exists under the data root, in :data:`DATASET_FOLDERS` order."""
    root = data_root()
    found, seen = [], set()
    for name, folder in DATASET_FOLDERS.items():
        path = root / folder
        if path.is_dir() and folder not in seen:
            found.append((name, path))
            seen.add(folder)
    return found


def parse_shots(values: Iterable[str | int]) -> list[int | str]:
    """``["1", "4", "all"]`` -> ``[1, 4, "all"]``; refuses anything else.

    >>> parse_shots(["4", "all", 1])
    [4, 'all', 1]
    """
    out: list[int | str] = []
    for v in values:
        text = str(v).strip().lower()
        if text == SHOTS_ALL:
            out.append(SHOTS_ALL)
        elif text.isdigit() and int(text) > 0:
            out.append(int(text))
        else:
            raise ValueError(f"--shots takes a positive integer or 'all', got {v!r}")
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------- splits


@dataclass
class DatasetSplit:
    """The reference pool and the test set of one category (see the module docstring)."""

    protocol: str  # "train" | "held-out normals" | "given"
    pool: list[Path]
    test: list[Sample]
    note: str = ""


def evenly_spaced(items: list, n: int) -> list:
    """``n`` items at indices ``linspace(0, len-1, n)`` (all of them when ``n >= len``).

    >>> evenly_spaced(list(range(10)), 3)
    [0, 4, 9]
    """
    if n >= len(items):
        return list(items)
    if n <= 0:
        return []
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


def cap_test(samples: list[Sample], n: int) -> list[Sample]:
    """At most ``n`` test samples, evenly spaced within each class, keeping at least one of each class.

    >>> s = [Sample(Path(f"{i}.png"), "c", int(i >= 8)) for i in range(10)]
    >>> [int(x.image_path.stem) for x in cap_test(s, 4)]
    [0, 4, 7, 8]
    """
    if n >= len(samples):
        return list(samples)
    normal = [s for s in samples if not s.is_anomalous]
    anomalous = [s for s in samples if s.is_anomalous]
    n_normal = round(n * len(normal) / len(samples))
    n_normal = min(len(normal), max(n_normal, 1 if normal else 0, n - len(anomalous)))
    if anomalous and n_normal >= n:
        n_normal = n - 1
    picked = evenly_spaced(normal, n_normal) + evenly_spaced(anomalous, n - n_normal)
    return sorted(picked, key=lambda s: str(s.image_path))


def split_dataset(samples: list[Sample], max_normals: int = 50) -> DatasetSplit:
    """Decide where a category's good references come from and what is tested.

    Args:
        samples: every sample of one category (all splits), as a reader returns them.
        max_normals: size cap of a held-out reference pool.
    """
    test = [s for s in samples if s.split == "test"]
    if any(s.references for s in test):
        return DatasetSplit("given", [], test, "each test image against its own given good reference")
    train = [s.image_path for s in samples if s.split == "train" and not s.is_anomalous]
    if train:
        note = ""
        if not any(not s.is_anomalous for s in test):
            val = [s for s in samples if s.split == "validation" and not s.is_anomalous]
            if val:
                test = sorted(test + val, key=lambda s: str(s.image_path))
                note = f"no normal test images: the {len(val)} validation/good images are the normal test images"
        return DatasetSplit("train", train, test, note)
    normals = [s for s in samples if not s.is_anomalous]
    n_pool = min(max_normals, len(normals) // 2)
    pool = evenly_spaced(normals, n_pool)
    held = {s.image_path for s in pool}
    rest = [s for s in samples if s.image_path not in held]
    return DatasetSplit("held-out normals", [s.image_path for s in pool], rest,
                        f"no train split: {len(pool)} of {len(normals)} normal images (evenly spaced) are the "
                        "reference pool and are not tested")


def draw_references(pool: list[Path], shots: int | str, seed: int, category: str, max_normals: int = 50) -> list[Path]:
    """The k references of one group: a seeded draw without replacement, in pool order.

    ``shots="all"`` takes the pool (a seeded draw of ``max_normals`` when it is larger).
    """
    k = len(pool) if shots == SHOTS_ALL else int(shots)
    k = min(k, len(pool), max_normals if shots == SHOTS_ALL else len(pool))
    if k >= len(pool):
        return list(pool)
    rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
    idx = np.sort(rng.choice(len(pool), size=k, replace=False))
    return [pool[i] for i in idx]


# ----------------------------------------------------------------------------- groups


@dataclass
class Group:
    """One ``(dataset, category, shots, seed)`` with the policies still to run on it."""

    dataset: str
    root: Path
    category: str
    shots: int | str
    seed: int
    protocol: str
    references: list[Path]
    test: list[Sample]
    policies: list[str]
    note: str = ""
    examples: bool = False

    def key(self, policy: str) -> tuple:
        return record_key({"dataset": self.dataset, "category": self.category, "shots": self.shots,
                           "seed": self.seed, "policy": policy})

    @property
    def title(self) -> str:
        return f"{self.dataset}/{self.category} shots={self.shots} seed={self.seed}"


def record_key(record: dict[str, Any]) -> tuple:
    """The identity of a record: ``(dataset, category, shots, seed, policy)``."""
    return (record["dataset"], record["category"], str(record["shots"]), int(record["seed"]), record["policy"])


def plan(config: EvalConfig, done: set[tuple] = frozenset()) -> list[Group]:
    """Every group of the run with the policies not yet in ``done`` (groups with none dropped).

    Raises:
        ValueError: a requested category exists in none of the datasets, an unknown policy.
    """
    labels = [policy_label(p, config.disable_tools) for p in config.policies]
    if len(set(labels)) != len(labels):
        raise ValueError(f"policies give duplicate labels: {labels}")
    groups: list[Group] = []
    wanted = list(dict.fromkeys(config.categories)) if config.categories else None
    seen_categories: set[str] = set()
    for dataset, root in config.datasets:
        available = list_categories(dataset, root)
        cats = [c for c in available if wanted is None or c in wanted]
        seen_categories.update(cats)
        for cat in cats:
            split = split_dataset(load_dataset(dataset, root, cat), config.max_normals)
            test = cap_test(split.test, config.max_test) if config.max_test else split.test
            if not test:
                log.warning("%s/%s: no test images, skipped", dataset, cat)
                continue
            if split.protocol == "given":
                runs = [(SHOTS_GIVEN, 0, [])]
            else:
                runs, seen_sets = [], set()
                for shots in config.shots:
                    for seed in range(config.seeds):
                        refs = draw_references(split.pool, shots, seed, cat, config.max_normals)
                        signature = (shots, tuple(refs))
                        if signature in seen_sets:  # the whole pool: every seed draws the same set
                            continue
                        seen_sets.add(signature)
                        runs.append((shots, seed, refs))
            for shots, seed, refs in runs:
                group = Group(dataset, Path(root), cat, shots, seed, split.protocol, refs, test, [], split.note,
                              examples=config.examples and seed == 0)
                group.policies = [p for p in labels if group.key(p) not in done]
                if group.policies:
                    groups.append(group)
    if wanted:
        missing = [c for c in wanted if c not in seen_categories]
        if missing:
            names = ", ".join(f"{d}: {', '.join(list_categories(d, r))}" for d, r in config.datasets)
            raise ValueError(f"category {', '.join(missing)} not found (available: {names})")
    return groups


# ----------------------------------------------------------------------------- memory


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux ``clear_refs``); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (``VmHWM``; ``ru_maxrss`` where unavailable)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- inspection


@dataclass
class PreparedQuery:
    """What every policy shares for one query: the image, its features, the global look, the map."""

    path: Path
    image: Image.Image
    grid: np.ndarray
    look: Any
    heatmap: np.ndarray
    plain_heatmap: np.ndarray  # the plain nearest-neighbour map (knn, embedded-no-selfsim)
    ms: float
    cpu_ms: float


class SharedInspector(Inspector):
    """An :class:`Inspector` whose episodes start from a prepared query (nothing re-extracted)."""

    prepared: PreparedQuery | None = None

    def episode(self, image, sample=None):  # noqa: ANN001, ANN201 - same signature as Inspector.episode
        prep = self.prepared
        if prep is None:
            return super().episode(image, sample)
        episode, warnings = super().episode(prep.image, sample)
        episode.trajectory.query_path = prep.path
        episode.__dict__["grid"] = prep.grid  # functools.cached_property storage
        episode.__dict__["look"] = prep.look
        episode.heatmap = lambda plain=False: prep.plain_heatmap if plain else prep.heatmap
        return episode, warnings


def prepare_query(product: Product, path: Path) -> PreparedQuery:
    """Load the query and compute its features, global look and heat map once."""
    start, cpu = time.perf_counter(), time.process_time()
    image = load_image(path, product.max_side)
    episode, _ = Inspector(product, tools={}).episode(image)
    grid = episode.grid
    look = episode.look
    heatmap = episode.heatmap()
    plain_heatmap = episode.heatmap(plain=True) if look.knn is not None else heatmap
    for arr in (grid, look.patch_map, heatmap, plain_heatmap):
        arr.flags.writeable = False  # shared by every policy: a tool that writes into it fails loudly
    return PreparedQuery(path, image, grid, look, heatmap, plain_heatmap, (time.perf_counter() - start) * 1000,
                         (time.process_time() - cpu) * 1000)


def answer_score(result: InspectionResult) -> tuple[float, str]:
    """The image score for AUROC: the answer's score, else one derived from the verdict.

    A policy that gives no score (a VLM) is ranked by its verdict and confidence
    (anomalous: ``0.5 + confidence / 2``, normal: ``0.5 - confidence / 2``, no answer: 0.5),
    never by the normal bank's score, so its AUROC measures its own answers.

    Returns:
        ``(score, source)`` with source ``"policy"`` or ``"verdict"``.
    """
    ans = result.trajectory.answer
    if ans is not None and ans.score is not None and math.isfinite(ans.score):
        return float(ans.score), "policy"
    if ans is None or ans.anomaly_present is None:
        return 0.5, "verdict"
    conf = 1.0 if ans.confidence is None else min(max(float(ans.confidence), 0.0), 1.0)
    return (0.5 + conf / 2 if ans.anomaly_present else 0.5 - conf / 2), "verdict"


def _downsample_size(width: int, height: int, side: int = PIXEL_SIDE) -> tuple[int, int]:
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _downsample_map(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if heatmap.shape[::-1] == size:
        return np.asarray(heatmap, dtype=np.float32)
    img = Image.fromarray(np.asarray(heatmap, dtype=np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float32)


def _relpath(path: Path) -> str:
    """``path`` relative to the data root when it lies inside it (portable sample tables)."""
    try:
        return Path(path).resolve().relative_to(data_root().resolve()).as_posix()
    except (ValueError, DatasetError):  # outside the data root, or no data root
        return str(path)


@dataclass
class _PolicyRun:
    """One policy's tools and its per-image results within a group."""

    label: str
    policy: Any
    tools: dict
    disabled: tuple[str, ...]
    inspector: SharedInspector
    rows: list[dict] = field(default_factory=list)
    maps: list[np.ndarray | None] = field(default_factory=list)
    boxes: list[Box | None] = field(default_factory=list)


def run_group(group: Group, config: EvalConfig, out_dir: Path,
              on_image: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Evaluate the group's policies and append their records to ``out_dir/records.jsonl``."""
    records = evaluate_group(group, config, out_dir, on_image)
    for record in records:
        append_record(Path(out_dir) / RECORDS_FILE, record)
    return records


def evaluate_group(group: Group, config: EvalConfig, out_dir: Path,
                   on_image: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """Evaluate the group's policies: one record per policy (example tiles go to ``out_dir/examples``).

    Args:
        on_image: called with the number of inspections just finished (progress bars).
    """
    from iad_agent.tools.priors import domain_priors

    start = time.perf_counter()
    reset_peak_rss()
    priors = domain_priors(group.category)
    runs = []
    cache = ToolCache()  # the policies share tool results on each image (timed as if each ran its own)
    for label in group.policies:
        resolved = resolve_policy(_name_for(label, config), config.disable_tools, config.policy_options)
        runs.append(_PolicyRun(label, resolved.policy, cached_tools(resolved.tools, cache), resolved.disabled, None))
    product = None
    build_ms: list[float] = []
    if group.protocol != "given":
        t0 = time.perf_counter()
        product = Product.build(group.category, group.references, config.features, fpr=config.fpr, priors=priors,
                                allow_mixed_sizes=True)
        build_ms.append((time.perf_counter() - t0) * 1000)
    masks: list[np.ndarray | None] = []
    pixel_ok: list[bool] = []
    for sample in group.test:
        if group.protocol == "given":
            t0 = time.perf_counter()
            product = Product.build(group.category, list(sample.references), config.features, fpr=config.fpr,
                                    priors=priors, allow_mixed_sizes=True)
            build_ms.append((time.perf_counter() - t0) * 1000)
        prep = prepare_query(product, sample.image_path)
        size = _downsample_size(prep.image.width, prep.image.height)
        gt = sample.ground_truth_mask(size=size)
        masks.append(gt)
        pixel_ok.append(gt is not None and (sample.mask_path is not None or not sample.is_anomalous))
        shared_map: dict[int, np.ndarray] = {}
        cache.new_query()
        for run in runs:
            if run.inspector is None or run.inspector.product is not product:
                run.inspector = SharedInspector(product, run.policy, run.tools, max_steps=config.max_steps)
            run.inspector.prepared = prep
            cache.new_run()
            t0, c0 = time.perf_counter(), time.process_time()
            result = run.inspector.inspect(sample.image_path, sample)
            ms = prep.ms + (time.perf_counter() - t0) * 1000 + cache.replayed_ms
            cpu_ms = prep.cpu_ms + (time.process_time() - c0) * 1000 + cache.replayed_cpu_ms
            key = id(result.heatmap)
            if key not in shared_map:
                shared_map[key] = _downsample_map(result.heatmap, size).astype(np.float16)
            run.maps.append(shared_map[key])
            run.rows.append(_row(group, run.label, sample, result, ms, cpu_ms, gt))
            run.boxes.append(result.trajectory.answer.box if result.trajectory.answer else None)
            if on_image:
                on_image(1)
        del prep
    peak = peak_rss_mb()
    wall = time.perf_counter() - start
    records = []
    pixel_cache: dict[bytes, tuple] = {}
    for run in runs:
        record = _record(group, run, masks, pixel_ok, pixel_cache, build_ms, product, peak, wall)
        if group.examples:
            record["examples"] = _save_examples(group, run, masks, Path(out_dir))
        records.append(record)
    return records


def _name_for(label: str, config: EvalConfig) -> str:
    """The policy name a label came from (undo the ``--disable-tool`` suffixes)."""
    for name in config.policies:
        if policy_label(name, config.disable_tools) == label:
            return name
    return label


def _row(group: Group, label: str, sample: Sample, result: InspectionResult, ms: float, cpu_ms: float,
         gt: np.ndarray | None) -> dict:
    traj = result.trajectory
    ans = traj.answer
    score, source = answer_score(result)
    if source == "verdict":
        threshold = 0.5
    elif ans is not None and ans.threshold is not None:
        threshold = ans.threshold
    else:
        threshold = result.episode.look.threshold
    verdict = None if ans is None else ans.anomaly_present
    gt_box = Box.from_mask(gt) if gt is not None and sample.is_anomalous else None
    box = ans.box if ans else None
    return {
        "dataset": group.dataset,
        "category": group.category,
        "shots": group.shots,
        "seed": group.seed,
        "policy": label,
        "path": _relpath(sample.image_path),
        "label": int(sample.label),
        "defect_type": sample.defect_type,
        "score": round(score, 6),
        "score_source": source,
        "threshold": round(float(threshold), 6),
        "verdict": {True: "anomalous", False: "normal", None: "none"}[verdict],
        "box": box.to_list() if box else None,
        "gt_box": gt_box.to_list() if gt_box else None,
        "box_iou": metrics.box_iou(box, gt_box) if gt_box is not None else None,
        "box_hit": metrics.box_hit(box, gt) if gt_box is not None else None,
        "pred_defect_type": ans.defect_type if ans else None,
        "tool_calls": len(traj.tool_calls),
        "tools": "+".join(c.name for c in traj.tool_calls),
        "stop_reason": traj.stop_reason,
        "ms": round(ms, 2),
        "cpu_ms": round(cpu_ms, 2),
    }


def config_fpr(product: Product | None) -> float | None:
    """The false-alarm rate the product's threshold promises (``--fpr`` at registration)."""
    cal = product.bank.calibration if product is not None else None
    return float(cal.fpr) if cal is not None else None


def _record(group: Group, run: _PolicyRun, masks: list, pixel_ok: list[bool], pixel_cache: dict,
            build_ms: list[float], product: Product | None, peak: float, wall: float) -> dict[str, Any]:
    rows = run.rows
    labels = [r["label"] for r in rows]
    scores = [r["score"] for r in rows]
    verdicts = [{"anomalous": True, "normal": False, "none": None}[r["verdict"]] for r in rows]
    binary = metrics.binary_metrics(labels, verdicts)
    oracle, oracle_thr = metrics.oracle_f1(labels, scores) if len(set(labels)) == 2 else (None, None)
    pix_masks = [m for m, ok in zip(masks, pixel_ok) if ok]
    pix_maps = [np.asarray(a, dtype=np.float32) for a, ok in zip(run.maps, pixel_ok) if ok]
    pixel_auroc, aupro = _pixel_metrics(pix_masks, pix_maps, pixel_cache)
    ious = [r["box_iou"] for r in rows if r["box_iou"] is not None]
    hits = [r["box_hit"] for r in rows if r["box_hit"] is not None]
    anomalous = [r for r in rows if r["label"] == 1]
    latency = metrics.latency_percentiles([r["ms"] for r in rows])
    cpu = metrics.latency_percentiles([r["cpu_ms"] for r in rows])
    tool_counts: dict[str, float] = {}
    for r in rows:
        for t in filter(None, r["tools"].split("+")):
            tool_counts[t] = tool_counts.get(t, 0) + 1 / len(rows)
    return {
        "dataset": group.dataset,
        "category": group.category,
        "shots": group.shots,
        "seed": group.seed,
        "policy": run.label,
        "disabled_tools": list(run.disabled),
        "protocol": group.protocol,
        "protocol_note": group.note,
        "n_references": len(group.references) if group.protocol != "given" else 1,
        "references": [_relpath(p) for p in group.references],
        "n_test": len(rows),
        "n_normal": sum(1 for v in labels if v == 0),
        "n_anomalous": sum(1 for v in labels if v == 1),
        "image_auroc": metrics.image_auroc(labels, scores),
        "image_ap": metrics.image_ap(labels, scores),
        "f1": binary["f1"],
        "balanced_accuracy": binary["balanced_accuracy"],
        "precision": binary["precision"],
        "tpr": binary["tpr"],
        "tnr": binary["tnr"],
        "promised_fpr": config_fpr(product) if group.protocol != "given" else None,
        "false_alarm_rate": None if binary["tnr"] is None else 1 - binary["tnr"],  # measured on the test's good images
        "miss_rate": None if binary["tpr"] is None else 1 - binary["tpr"],
        "no_answer": binary["no_answer"],
        "oracle_f1": oracle,
        "oracle_threshold": oracle_thr,
        "threshold": float(product.bank.calibration.threshold) if product is not None and group.protocol != "given" else None,
        "score_source": sorted({r["score_source"] for r in rows}),
        "pixel_auroc": pixel_auroc,
        "aupro": aupro,
        "box_iou": float(np.mean(ious)) if ious else None,
        "box_hit_rate": float(np.mean(hits)) if hits else None,
        "n_localised": len(ious),
        "defect_type_accuracy": metrics.defect_type_accuracy([r["defect_type"] for r in anomalous],
                                                             [r["pred_defect_type"] for r in anomalous]),
        "tool_calls_per_image": float(np.mean([r["tool_calls"] for r in rows])),
        "tool_calls_by_tool": {k: round(v, 4) for k, v in sorted(tool_counts.items())},
        "ms_per_image_p50": latency["p50"],
        "ms_per_image_p95": latency["p95"],
        "cpu_ms_per_image_p50": cpu["p50"],
        "cpu_ms_per_image_p95": cpu["p95"],
        "build_ms": float(np.mean(build_ms)) if build_ms else None,
        "peak_rss_mb": round(peak, 1),
        "group_wall_s": round(wall, 2),
        "cores": os.cpu_count(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "samples": rows,
    }


def _pixel_metrics(masks: list[np.ndarray], maps: list[np.ndarray], cache: dict) -> tuple[float | None, float | None]:
    """Pixel AUROC and AUPRO (FPR <= 0.3), cached by content: policies sharing maps compute once."""
    if not masks or not any(m.any() for m in masks):
        return None, None
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for a in maps:
        h.update(a.tobytes())
    key = h.digest()
    if key not in cache:
        cache[key] = (metrics.pixel_auroc(masks, maps), metrics.aupro(masks, maps, fpr_limit=0.3))
    return cache[key]


def _save_examples(group: Group, run: _PolicyRun, masks: list, out_dir: Path, n: int = 2) -> list[dict]:
    """Heat-map tiles (answer box white, ground truth green) of the best and worst cases.

    Best: the anomalous images scored furthest above the threshold. Worst: the images
    furthest on the wrong side of it (missed defects, false alarms).
    """
    from iad_agent.report import overlay

    def margin(i: int) -> float:  # how far on the right side of the threshold, relative to it
        r = run.rows[i]
        m = (r["score"] - r["threshold"]) / max(abs(r["threshold"]), 1e-9)
        return m if r["label"] == 1 else -m

    order = sorted(range(len(run.rows)), key=margin)
    best = [i for i in reversed(order) if run.rows[i]["label"] == 1][:n]
    worst = [i for i in order if i not in best][:n]
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{group.dataset}_{group.category}_{group.shots}_{group.seed}_{run.label}")
    out = []
    for kind, picks in (("best", best), ("worst", worst)):
        for j, i in enumerate(picks):
            row = run.rows[i]
            sample = group.test[i]
            image = load_image(sample.image_path)
            image.thumbnail((256, 256))
            heat = np.asarray(run.maps[i], dtype=np.float32)
            box = Box.from_list(row["box"]) if row["box"] else None
            tile = overlay(image, heat, vmax=2 * row["threshold"], box=box)
            if masks[i] is not None and masks[i].any():
                gt = Box.from_mask(masks[i])
                ImageDraw.Draw(tile).rectangle(gt.to_pixels(*tile.size), outline=(0, 255, 0), width=2)
            rel = Path("examples") / slug / f"{kind}{j}.png"
            save_png(tile, out_dir / rel)
            out.append({"kind": kind, "file": str(rel), "path": row["path"], "label": row["label"],
                        "defect_type": row["defect_type"], "score": row["score"], "threshold": row["threshold"],
                        "verdict": row["verdict"]})
    return out


# ----------------------------------------------------------------------------- records file


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one record as a JSON line, flushed and fsynced (a crash loses at most that line)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, ensure_ascii=False, default=_json_default)
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of ``records.jsonl``; a torn last line is ignored, the last copy of a key wins."""
    if not Path(path).exists():
        return []
    by_key: dict[tuple, dict] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                log.warning("%s:%d: unreadable record (interrupted write?) ignored", path, lineno)
                continue
            by_key[record_key(record)] = record
    return list(by_key.values())


def done_keys(out_dir: Path) -> set[tuple]:
    """Keys of the records already in ``out_dir/records.jsonl``."""
    return {record_key(r) for r in read_records(Path(out_dir) / RECORDS_FILE)}


def set_threads(threads: int) -> None:
    """Threads of torch, faiss (OpenMP) and numpy/scipy (OpenBLAS) in this process.

    On a busy machine, more threads than free cores make every parallel region wait for the
    slowest thread (we measured one 256 px feature extraction at 40 ms with one thread and
    over 1 s with two while other processes ran), so the harness sets this explicitly. The
    BLAS pools matter too: the tools' matrix products would otherwise use every core.
    """
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(max(1, threads))
    faiss.omp_set_num_threads(max(1, threads))
    threadpool_limits(limits=max(1, threads))


_PROGRESS_QUEUE = None


def _worker_init(threads: int, queue) -> None:  # noqa: ANN001 - multiprocessing queue
    global _PROGRESS_QUEUE
    _PROGRESS_QUEUE = queue
    set_threads(threads)
    logging.basicConfig(level=logging.WARNING)


def _worker_evaluate(group: Group, config: EvalConfig, out_dir: Path) -> list[dict[str, Any]]:
    return evaluate_group(group, config, out_dir, on_image=_PROGRESS_QUEUE.put if _PROGRESS_QUEUE else None)


def run_groups(groups: list[Group], config: EvalConfig, out_dir: Path, workers: int = 1, threads: int | None = None,
               on_image: Callable[[int], None] | None = None,
               on_group: Callable[[Group, int], None] | None = None) -> int:
    """Run groups, appending each finished group's records to ``records.jsonl`` as it finishes.

    Args:
        workers: processes evaluating groups in parallel (spawned; each registers its own
            products). Records are written by this process only.
        threads: torch / faiss threads per process (default ``cores // workers``).
        on_image: progress: number of inspections just finished.
        on_group: called with ``(group, number of groups finished)`` when a group finishes.

    Returns:
        The number of records written.
    """
    out_dir = Path(out_dir)
    threads = threads or max(1, (os.cpu_count() or 1) // max(workers, 1))
    written = 0
    if workers <= 1:
        set_threads(threads)
        for i, group in enumerate(groups, 1):
            written += len(run_group(group, config, out_dir, on_image))
            if on_group:
                on_group(group, i)
        return written
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    progress = ctx.Queue()
    # Largest groups first, so that no worker is left with a big one at the end.
    order = sorted(groups, key=lambda g: -(len(g.test) * len(g.policies) + 4 * len(g.references)))
    finished = 0
    with ProcessPoolExecutor(workers, mp_context=ctx, initializer=_worker_init, initargs=(threads, progress)) as pool:
        pending = {pool.submit(_worker_evaluate, g, config, out_dir): g for g in order}
        while pending:
            done, _ = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            _drain(progress, on_image, queue_mod)
            for future in done:
                group = pending.pop(future)
                for record in future.result():
                    append_record(out_dir / RECORDS_FILE, record)
                    written += 1
                finished += 1
                if on_group:
                    on_group(group, finished)
        _drain(progress, on_image, queue_mod)
    return written


def _drain(progress, on_image, queue_mod) -> None:  # noqa: ANN001
    while True:
        try:
            n = progress.get_nowait()
        except (queue_mod.Empty, OSError, ValueError):
            return
        if on_image:
            on_image(n)


def run_benchmark(config: EvalConfig, out_dir: Path, resume: bool = False, workers: int = 1,
                  on_image: Callable[[int], None] | None = None) -> int:
    """Plan and run every group (library entry point; the CLI adds progress bars and reports).

    Returns:
        The number of records written.

    Raises:
        FileExistsError: ``out_dir`` already holds records and ``resume`` is false.
    """
    out_dir = Path(out_dir)
    existing = out_dir / RECORDS_FILE
    if existing.exists() and not resume:
        raise FileExistsError(f"{existing} exists: pass --resume to continue that run, or choose another --out")
    groups = plan(config, done_keys(out_dir) if resume else set())
    return run_groups(groups, config, out_dir, workers=workers, on_image=on_image)

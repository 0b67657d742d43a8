"""Benchmark records: one row per inspected image, one record per (group, policy), the records file.

A record holds the group's identity, its protocol, the image-level metrics (AUROC, AP, F1 and
balanced accuracy at the calibrated threshold, the oracle F1), pixel metrics, box hits, defect
types, tool use, latency and memory, and the per-image rows. Every finished group appends
its records to ``records.jsonl`` (written, flushed and fsynced per line); ``--resume`` skips
the keys already there, and ``metrics.json``, ``samples.csv`` and ``report.md`` are
regenerated from that file (see :mod:`iad_agent.eval.report`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from iad_agent.datasets import DatasetError, data_root
from iad_agent.eval import metrics
from iad_agent.eval.plan import Group, record_key
from iad_agent.imageio import load_image, save_png
from iad_agent.inspector import InspectionResult, Inspector
from iad_agent.product import Product
from iad_agent.types import Box, Sample

log = logging.getLogger(__name__)

RECORDS_FILE = "records.jsonl"
#: Pixel metrics are computed on maps and masks downsampled to this long side.
PIXEL_SIDE = 256


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


def downsample_size(width: int, height: int, side: int = PIXEL_SIDE) -> tuple[int, int]:
    scale = min(1.0, side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def downsample_map(heatmap: np.ndarray, size: tuple[int, int]) -> np.ndarray:
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
class PolicyRun:
    """One policy's inspector and its per-image results within a group.

    Attributes:
        label: the policy's record label.
        policy / tools / disabled: what the label resolved to (tools wrapped in the group's cache).
        inspector: the inspector of the current product (a "given" group has one per image).
        rows: one :func:`image_row` per test image.
        maps: the heat maps, downsampled for the pixel metrics (shared between policies).
        registration: the ``Product.build`` settings of its product (``()``: the default product).
    """

    label: str
    policy: Any
    tools: dict
    disabled: tuple[str, ...]
    inspector: Inspector | None = None
    rows: list[dict] = field(default_factory=list)
    maps: list[np.ndarray | None] = field(default_factory=list)
    registration: tuple[tuple[str, bool], ...] = ()


def image_row(group: Group, label: str, sample: Sample, result: InspectionResult, ms: float, cpu_ms: float,
              gt: np.ndarray | None) -> dict:
    """One test image's row of ``samples.csv``: truth, answer, score, box hit, tool use, latency."""
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


def _promised_fpr(product: Product | None) -> float | None:
    """The false-alarm rate the product's threshold promises (``--fpr`` at registration)."""
    cal = product.bank.calibration if product is not None else None
    return float(cal.fpr) if cal is not None else None


def group_record(group: Group, run: PolicyRun, masks: list, pixel_ok: list[bool], pixel_cache: dict,
                 build_ms: list[float], product: Product | None, peak: float, wall: float) -> dict[str, Any]:
    """One policy's record of a finished group: metrics over its rows, latency, memory, the rows.

    Args:
        masks / pixel_ok: per test image, the downsampled ground truth and whether it counts
            for the pixel metrics.
        pixel_cache: pixel metrics by heat-map content, shared by the group's policies.
        build_ms: the product registration time(s); product: the group's product (``None``
            for a "given" group); peak / wall: the group's peak RSS (MiB) and wall time (s).
    """
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
    # localisation apart from the threshold: hits among the defective images the policy flagged
    flagged_hits = [r["box_hit"] for r in rows if r["box_hit"] is not None and r["verdict"] == "anomalous"]
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
        "promised_fpr": _promised_fpr(product) if group.protocol != "given" else None,
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
        "box_hit_rate_flagged": float(np.mean(flagged_hits)) if flagged_hits else None,
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
    h = hashlib.blake2b(digest_size=16)
    for a in maps:
        h.update(a.tobytes())
    key = h.digest()
    if key not in cache:
        cache[key] = (metrics.pixel_auroc(masks, maps), metrics.aupro(masks, maps, fpr_limit=0.3))
    return cache[key]


def save_examples(group: Group, run: PolicyRun, masks: list, out_dir: Path, n: int = 2) -> list[dict]:
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

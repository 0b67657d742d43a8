"""Aggregate benchmark records into ``metrics.json``: means and stds over seeds, means over categories.

Everything is computed from ``records.jsonl`` (one line per ``(dataset, category, shots, seed,
policy)``), so an interrupted and resumed run produces the same files as an uninterrupted one.

``metrics.json`` schema (``"schema": "iad-agent/eval-metrics/1"``):

* ``meta``: ``runs`` (each invocation: command, started, finished, wall_s, cores), ``date``,
  ``cores``, ``total_wall_s`` (sum over invocations), ``compute_s`` (sum of group times).
* ``records``: one object per ``(dataset, category, shots, seed, policy)`` with
  ``dataset, category, shots (int | "all" | "given"), seed, policy, disabled_tools, protocol,
  protocol_note, n_references, references, n_test, n_normal, n_anomalous, image_auroc,
  image_ap, f1, balanced_accuracy, precision, tpr, tnr, no_answer, oracle_f1,
  oracle_threshold, threshold, score_source, pixel_auroc, aupro, box_iou, box_hit_rate,
  n_localised, defect_type_accuracy, tool_calls_per_image, tool_calls_by_tool,
  ms_per_image_p50, ms_per_image_p95, cpu_ms_per_image_p50, cpu_ms_per_image_p95, build_ms,
  peak_rss_mb, group_wall_s, cores,
  finished_at, examples``. ``null`` where a metric does not apply (one class only, no masks,
  no labelled types).
* ``aggregates``: per ``(dataset, category, shots, policy)``: ``n_seeds``, ``n_normal``,
  ``n_anomalous`` and ``<metric>_mean`` / ``<metric>_std`` over seeds (sample std, 0 for one seed).
* ``summary``: per ``(shots, policy)``: ``<metric>_mean`` over categories of the per-category
  means, with ``n_categories``. Image-level metrics (AUROC, AP, F1, balanced accuracy,
  oracle F1) average only categories with both normal and anomalous test images.
* ``mmad`` (when questions were answered): per policy, the MMAD score table.
"""

from __future__ import annotations

import csv
import json
import io
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from iad_agent.eval.metrics import mean_std

SCHEMA = "iad-agent/eval-metrics/1"
#: Metrics averaged over seeds and categories.
METRICS = (
    "image_auroc", "image_ap", "f1", "balanced_accuracy", "false_alarm_rate", "miss_rate", "promised_fpr", "oracle_f1",
    "pixel_auroc", "aupro", "box_iou",
    "box_hit_rate", "box_hit_rate_flagged", "defect_type_accuracy", "tool_calls_per_image", "ms_per_image_p50", "ms_per_image_p95",
    "cpu_ms_per_image_p50", "cpu_ms_per_image_p95", "peak_rss_mb",
)
#: Metrics that need both normal and anomalous test images to mean anything.
IMAGE_LEVEL = ("image_auroc", "image_ap", "f1", "balanced_accuracy", "oracle_f1")
SAMPLE_COLUMNS = (
    "dataset", "category", "shots", "seed", "policy", "path", "label", "defect_type", "score", "score_source",
    "threshold", "verdict", "box", "gt_box", "box_iou", "box_hit", "pred_defect_type", "tool_calls", "tools",
    "stop_reason", "ms", "cpu_ms",
)
def _shots_order(value: Any) -> tuple:
    if isinstance(value, int) or (isinstance(value, str) and value.isdigit()):
        return (0, int(value))
    return (1, str(value))


def _policy_rank(policy: str) -> tuple:
    """knn first, then the agent, then its ablations, then anything else (VLM backends)."""
    return (0 if policy == "knn" else 1 if policy == "embedded" else 2 if policy.startswith("embedded") else 3, policy)


def _policy_order(policies: Iterable[str]) -> list[str]:
    return sorted(set(policies), key=_policy_rank)


def strip_samples(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k != "samples"}


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and std over seeds per ``(dataset, category, shots, policy)``."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        groups[(r["dataset"], r["category"], str(r["shots"]), r["policy"])].append(r)
    out = []
    for (dataset, category, _, policy), rs in groups.items():
        row: dict[str, Any] = {"dataset": dataset, "category": category, "shots": rs[0]["shots"], "policy": policy,
                               "n_seeds": len(rs), "n_normal": rs[0]["n_normal"], "n_anomalous": rs[0]["n_anomalous"],
                               "protocol": rs[0].get("protocol")}
        for m in METRICS:
            mean, std = mean_std([r.get(m) for r in rs], ddof=1)
            row[f"{m}_mean"], row[f"{m}_std"] = mean, std
        out.append(row)
    return sorted(out, key=lambda r: (r["dataset"], r["category"], _shots_order(r["shots"]), _policy_rank(r["policy"])))


def summarize(aggregates: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean over categories per ``(shots, policy)`` (image-level metrics: two-class categories only)."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for a in aggregates:
        groups[(str(a["shots"]), a["policy"])].append(a)
    out = []
    for (_, policy), rows in groups.items():
        row: dict[str, Any] = {"shots": rows[0]["shots"], "policy": policy, "n_categories": len(rows),
                               "categories": sorted(f"{r['dataset']}/{r['category']}" for r in rows)}
        for m in METRICS:
            use = [r for r in rows if not (m in IMAGE_LEVEL and not (r["n_normal"] and r["n_anomalous"]))]
            row[f"{m}_mean"] = mean_std([r.get(f"{m}_mean") for r in use])[0]
        out.append(row)
    return sorted(out, key=lambda r: (_shots_order(r["shots"]), _policy_rank(r["policy"])))


def build_metrics(records: list[dict[str, Any]], meta: dict[str, Any] | None = None,
                  mmad: dict[str, Any] | None = None) -> dict[str, Any]:
    """The ``metrics.json`` object (see the module docstring)."""
    aggregates = aggregate(records)
    meta = dict(meta or {})
    if any(r.get("samples") for r in records):
        meta["time_breakdown"] = time_breakdown(records)
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "meta": meta,
        "records": [strip_samples(r) for r in records],
        "aggregates": aggregates,
        "summary": summarize(aggregates),
    }
    if mmad:
        doc["mmad"] = mmad
    return doc


def time_breakdown(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per category: wall seconds of its groups, of product registration, and CPU seconds per policy.

    A policy's CPU seconds include the per-image preparation it shares with the others (query
    features, global look, heat map), which is about what ``knn`` costs in total.
    """
    rows: dict[str, dict[str, Any]] = {}
    seen: set[tuple] = set()
    for r in records:
        cat = f"{r['dataset']}/{r['category']}"
        row = rows.setdefault(cat, {"category": cat, "groups": 0, "group_wall_s": 0.0, "registration_s": 0.0,
                                    "images": 0, "cpu_s": {}})
        key = (cat, str(r["shots"]), r["seed"])
        if key not in seen:
            seen.add(key)
            builds = r["n_test"] if r.get("protocol") == "given" else 1
            row["groups"] += 1
            row["images"] += r["n_test"]
            row["group_wall_s"] += float(r.get("group_wall_s") or 0)
            row["registration_s"] += float(r.get("build_ms") or 0) * builds / 1000
        cpu = sum(float(s.get("cpu_ms") or 0) for s in r.get("samples", [])) / 1000
        row["cpu_s"][r["policy"]] = row["cpu_s"].get(r["policy"], 0.0) + cpu
    out = list(rows.values())
    for row in out:
        row["group_wall_s"] = round(row["group_wall_s"], 1)
        row["registration_s"] = round(row["registration_s"], 1)
        row["cpu_s"] = {k: round(v, 1) for k, v in row["cpu_s"].items()}
    return sorted(out, key=lambda r: -r["group_wall_s"])


def samples_csv(records: list[dict[str, Any]]) -> str:
    """One row per test image and policy record."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SAMPLE_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in records:
        for row in r.get("samples", []):
            row = dict(row)
            for key in ("box", "gt_box"):
                row[key] = json.dumps(row[key]) if row.get(key) is not None else ""
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in SAMPLE_COLUMNS})
    return buf.getvalue()


# ----------------------------------------------------------------------------- markdown

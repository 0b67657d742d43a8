"""``iad eval --shots 0``: zero-shot groups, where the batch is the category's test set (as MuSc evaluates).

No good reference is drawn: every test image is scored against the *other* test images of its
category (:mod:`iad_agent.zeroshot`), and the threshold is the batch's own label-free outlier
rule; the batch is matched to its median brightness when its light varies (as ``iad inspect
--zero-shot`` does). The policies are :data:`iad_agent.zeroshot.ZERO_SHOT_POLICIES`:
``zero-shot`` (the chosen mix), ``zero-shot-mutual`` (mutual scoring alone, MuSc-style),
``zero-shot-self`` (self-similarity alone) and ``zero-shot-no-clip`` (the chosen mix on patch vectors
whose length is not capped), so each component's contribution is measured. Features are extracted
once per group, both maps once per cap setting, and shared by the policies; each image's latency
is its share of the batch's wall time (the uncapped maps' extra work counted only in
``zero-shot-no-clip``'s).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from iad_agent.eval import metrics
from iad_agent.eval.plan import EvalConfig, Group
from iad_agent.eval.records import PolicyRun, _relpath, downsample_map, downsample_size, group_record, save_examples
from iad_agent.types import Box


def _row(group: Group, label: str, sample, result, ms: float, cpu_ms: float, gt: np.ndarray | None) -> dict:  # noqa: ANN001
    gt_box = Box.from_mask(gt) if gt is not None and sample.is_anomalous else None
    box = result.box
    return {
        "dataset": group.dataset, "category": group.category, "shots": group.shots, "seed": group.seed,
        "policy": label, "path": _relpath(sample.image_path), "label": int(sample.label),
        "defect_type": sample.defect_type, "score": round(result.score, 6), "score_source": "policy",
        "threshold": round(result.threshold, 6), "verdict": "anomalous" if result.anomaly_present else "normal",
        "box": box.to_list() if box else None, "gt_box": gt_box.to_list() if gt_box else None,
        "box_iou": metrics.box_iou(box, gt_box) if gt_box is not None else None,
        "box_hit": metrics.box_hit(box, gt) if gt_box is not None else None,
        "pred_defect_type": None, "tool_calls": 0, "tools": "", "stop_reason": "answer",
        "ms": round(ms, 2), "cpu_ms": round(cpu_ms, 2),
    }


def evaluate_zero_shot_group(group: Group, config: EvalConfig, out_dir: Path,
                             on_image: Callable[[int], None] | None = None) -> list[dict[str, Any]]:
    """One record per zero-shot policy of a ``shots=0`` group (see the module docstring)."""
    from iad_agent.eval.runner import peak_rss_mb, reset_peak_rss
    from iad_agent.imageio import load_image
    from iad_agent.vision.brightness import luminance_stats
    from iad_agent.vision.features import FeatureExtractor
    from iad_agent.zeroshot import (
        ZERO_SHOT_POLICIES,
        batch_maps,
        feature_config_for,
        policy_settings,
        score_batch,
    )

    start, cpu0 = time.perf_counter(), time.process_time()
    reset_peak_rss()
    sizes_full, stats = [], []  # one scale (and brightness, when the batch's light varies) for the batch
    for s in group.test:
        img = load_image(s.image_path)
        sizes_full.append(img.size)
        stats.append(luminance_stats(img))
    features = feature_config_for(sizes_full, config.features, stats)
    extractor = FeatureExtractor(features)
    grids = [extractor.extract_batch([load_image(s.image_path)])[0] for s in group.test]
    settings_of = {label: policy_settings(label) for label in group.policies}
    maps, ms, cpu_ms = {}, {}, {}  # by cap setting: the batch's maps, and each image's share of their work
    extract_ms = (time.perf_counter() - start) * 1000
    extract_cpu_ms = (time.process_time() - cpu0) * 1000
    for clip in dict.fromkeys(s.clip_quantile for s in settings_of.values()):
        t0, c0 = time.perf_counter(), time.process_time()
        need_self = any(ZERO_SHOT_POLICIES[p] != 0.0 for p, s in settings_of.items() if s.clip_quantile == clip)
        first = next(s for s in settings_of.values() if s.clip_quantile == clip)
        maps[clip] = batch_maps(grids, first, need_self=need_self)
        ms[clip] = (extract_ms + (time.perf_counter() - t0) * 1000) / len(group.test)
        cpu_ms[clip] = (extract_cpu_ms + (time.process_time() - c0) * 1000) / len(group.test)
    del grids
    sizes = [downsample_size(*size) for size in sizes_full]
    masks = [s.ground_truth_mask(size=size) for s, size in zip(group.test, sizes)]
    pixel_ok = [gt is not None and (s.mask_path is not None or not s.is_anomalous) for s, gt in zip(group.test, masks)]
    runs = []
    for label in group.policies:
        settings = settings_of[label]
        results = score_batch(maps[settings.clip_quantile], [s.image_path for s in group.test], sizes_full,
                              group.category, settings, policy=label, brightness=features.brightness)
        run = PolicyRun(label, None, {}, ())
        for sample, result, size, gt in zip(group.test, results, sizes, masks):
            run.rows.append(_row(group, label, sample, result, ms[settings.clip_quantile],
                                 cpu_ms[settings.clip_quantile], gt))
            run.maps.append(downsample_map(result.heatmap, size).astype(np.float16))
            if on_image:
                on_image(1)
        runs.append(run)
    peak, wall = peak_rss_mb(), time.perf_counter() - start
    records, pixel_cache = [], {}
    for run in runs:
        record = group_record(group, run, masks, pixel_ok, pixel_cache, [], None, peak, wall)
        record["zero_shot"] = dataclasses.asdict(settings_of[run.label])
        record["zero_shot"]["brightness"] = list(features.brightness) if features.brightness else None
        if group.examples:
            record["examples"] = save_examples(group, run, masks, Path(out_dir))
        records.append(record)
    return records

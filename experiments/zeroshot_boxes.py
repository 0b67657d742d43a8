"""The zero-shot batch's box: how far to grow its region (``hot_spot_box``'s ``grow``), chosen on
synthetic defects (scratch).

For each category with masks, a batch of up to 24 good pool images, 8 of them carrying a synthetic
defect (``vision.synthetic``; masks known), is written to a temporary folder and inspected as
``iad inspect DIR --zero-shot`` does (``zeroshot.inspect_paths``); each synthetic defect's patch map
gets a box under each ``grow``, scored with the benchmark's ``box_hit`` and IoU: what the value is
chosen on. The check: the category's test set inspected as ``iad eval --shots 0`` does, every
anomalous image with a mask.

    PYTHONPATH=src:experiments OMP_NUM_THREADS=1 python experiments/zeroshot_boxes.py OUT.jsonl
    PYTHONPATH=src:experiments python experiments/zeroshot_boxes.py OUT.jsonl --summary
"""

from __future__ import annotations

import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

GROWS = (1.0, 0.9, 0.75, 0.5)
CATS = ["grid", "hazelnut", "transistor", "juice_bottle", "magnetic_tile"]


def boxes(result, mask):  # noqa: ANN001, ANN201 - {grow: (hit, iou)}
    from iad_agent.episode import BOX_SIGMA, hot_spot_box
    from iad_agent.eval.metrics import box_hit
    from iad_agent.types import Box

    out = {}
    for g in GROWS:
        b = hot_spot_box(result.patch_map, result.threshold, sigma=BOX_SIGMA, grow=g)
        out[str(g)] = (bool(box_hit(b, mask)), b.iou(Box.from_mask(mask)))
    return out


def run(out_path: str) -> None:
    import calib

    from iad_agent.eval.runner import set_threads
    from iad_agent.imageio import load_image
    from iad_agent.vision.synthetic import synthetic_defects
    from iad_agent.zeroshot import inspect_paths

    set_threads(1)
    with open(out_path, "a") as out:
        for cat, pool, test in calib.categories(CATS, False, 60):
            goods = pool[:24]
            imgs = [load_image(p) for p in goods[:8]]
            syn = synthetic_defects(imgs, 8, seed=1)
            rows = {"syn": defaultdict(list), "test": defaultdict(list)}
            with tempfile.TemporaryDirectory() as tmp:
                paths = []
                for i, p in enumerate(goods):
                    q = Path(tmp) / f"{i:03d}.png"
                    (syn[i][0] if i < 8 else load_image(p)).save(q)
                    paths.append(q)
                outcomes = inspect_paths(paths, cat)
            for i in range(8):
                for g, (hit, iou) in boxes(outcomes[i].result, syn[i][1]).items():
                    rows["syn"][g].append((hit, iou))
            bad = [s for s in test if s.is_anomalous and s.mask_path is not None]
            outcomes = inspect_paths([s.image_path for s in test], cat)
            by_path = {o.image: o.result for o in outcomes}
            for s in bad:
                for g, (hit, iou) in boxes(by_path[str(s.image_path)], s.ground_truth_mask()).items():
                    rows["test"][g].append((hit, iou))
            row = {"cat": cat, **{part: {g: [float(np.mean([h for h, _ in v])), float(np.mean([u for _, u in v]))]
                                         for g, v in rows[part].items()} for part in rows}}
            print(json.dumps(row), flush=True)
            out.write(json.dumps(row) + "\n")
            out.flush()


def summary(path: str) -> None:
    rows = [json.loads(line) for line in open(path)]
    for part in ("syn", "test"):
        print(f"{part}: hit / IoU per grow {GROWS}")
        for r in rows:
            print(f"  {r['cat']:14s} " + "  ".join(f"{r[part][str(g)][0]:.3f}/{r[part][str(g)][1]:.3f}" for g in GROWS))
        print("  mean           " + "  ".join(
            f"{np.mean([r[part][str(g)][0] for r in rows]):.3f}/{np.mean([r[part][str(g)][1] for r in rows]):.3f}" for g in GROWS))


if __name__ == "__main__":
    summary(sys.argv[1]) if "--summary" in sys.argv else run(sys.argv[1])

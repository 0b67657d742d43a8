"""Where the look's box goes: box rules compared on synthetic defects (choice) and real defects (check).

For each k-shot group (categories with masks), the product is registered as the package does
(cached 256-px grids, brightness rule, ``vision.learn.learn``); the look's patch map (fused when the
scoring uses self-similarity, else nearest neighbour) gives a box under each rule, scored with the
benchmark's ``box_hit`` (IoU >= 0.5 or the box holds the largest defect region's centroid) against

* synthetic defects made from the references (their masks are known; scored leave-one-out, as
  registration does): what a rule could be chosen on, and
* the anomalous test images (every one, whatever the verdict): the check.

    PYTHONPATH=src python experiments/boxes.py --out /work/scale/boxes.jsonl
    PYTHONPATH=src python experiments/boxes.py --summary /work/scale/boxes.jsonl
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import calib  # noqa: E402


def rules():  # noqa: ANN201
    from iad_agent.episode import hot_spot_box
    from iad_agent.vision.grid_ops import gaussian_filter

    def rel(frac):  # noqa: ANN001, ANN202
        def f(m, level):  # noqa: ANN001, ANN202
            peak, med = float(m.max()), float(np.median(m))
            return hot_spot_box(m, max(level, med + frac * (peak - med)))
        return f

    def smooth(sigma):  # noqa: ANN001, ANN202
        return lambda m, level: hot_spot_box(gaussian_filter(np.asarray(m, np.float32), sigma=sigma), level)

    def peak_smoothed(sigma):  # noqa: ANN001, ANN202
        from iad_agent.types import Box
        from iad_agent.vision.grid_ops import region_at

        def f(m, level):  # noqa: ANN001, ANN202
            sm = gaussian_filter(np.asarray(m, np.float32), sigma=sigma)
            peak = np.unravel_index(int(np.argmax(sm)), sm.shape)
            cut = level if m[peak] > level else 0.5 * (m[peak] + float(np.median(m)))
            region = region_at(m > cut, peak)
            g_h, g_w = m.shape
            box = Box.from_mask(region) or Box(peak[1] / g_w, peak[0] / g_h, (peak[1] + 1) / g_w, (peak[0] + 1) / g_h)
            return box.clamped(0.12)
        return f

    return {
        "current": lambda m, level: hot_spot_box(m, level),
        "smooth1": smooth(1.0),
        "smooth2": smooth(2.0),
        "peak_s1": peak_smoothed(1.0),
        "peak_s2": peak_smoothed(2.0),
        "peak_s3": peak_smoothed(3.0),
    }


def dump(out_path: str, shots: list[str], cats: list[str]) -> None:
    from iad_agent.eval.metrics import box_hit
    from iad_agent.types import Box
    from iad_agent.eval.plan import draw_references, parse_shots
    from iad_agent.eval.runner import set_threads
    from iad_agent.imageio import load_image
    from iad_agent.vision.brightness import brightness_target
    from iad_agent.vision.similarity import self_similarity_map
    from iad_agent.vision.synthetic import synthetic_defects

    set_threads(1)
    R = rules()
    with open(out_path, "a") as out:
        for cat, pool, test in calib.categories(cats, False, 60):
            bad = [s for s in test if s.is_anomalous and s.mask_path is not None]
            if not bad:
                continue
            for k in parse_shots(shots):
                for seed in range(1 if k == "all" else 3):
                    refs = draw_references(pool, k, seed, cat)
                    imgs = [load_image(p) for p in refs]
                    config = dataclasses.replace(calib.product_config(refs), brightness=brightness_target(imgs))
                    bank, cal = calib.learned_bank(refs, config)
                    s = bank.scoring
                    level = cal.patch_threshold if s.uses_self else (cal.knn_patch_threshold or cal.patch_threshold)

                    def look(grid, exclude=None):  # noqa: ANN001, ANN202
                        knn = bank.patch_distances(grid, exclude=exclude)
                        return s.fuse(knn, self_similarity_map(grid)) if s.uses_self else knn

                    row = {"cat": cat, "shots": str(k), "seed": seed, "syn": defaultdict(list), "test": defaultdict(list),
                           "area": defaultdict(list), "iou": defaultdict(list),
                           "syn_iou": defaultdict(list), "syn_area": defaultdict(list)}
                    src = list(range(len(refs)))
                    syn = synthetic_defects(imgs, 16, seed=1)
                    grids = calib.extractor(config)([im for im, _, _ in syn])
                    for j, ((_, mask, _), g) in enumerate(zip(syn, grids)):
                        m = look(np.asarray(g, np.float32), exclude=src[j % len(src)] if len(refs) > 1 else None)
                        syn_box = Box.from_mask(mask)
                        for name, rule in R.items():
                            b = rule(m, level)
                            row["syn"][name].append(bool(box_hit(b, mask)))
                            row["syn_iou"][name].append(b.iou(syn_box))
                            row["syn_area"][name].append(b.width * b.height)
                    for smp in bad:
                        m = look(calib.grid_of(smp.image_path, config))
                        gt = smp.ground_truth_mask()
                        gt_box = Box.from_mask(gt)
                        for name, rule in R.items():
                            b = rule(m, level)
                            row["test"][name].append(bool(box_hit(b, gt)))
                            row["area"][name].append(b.width * b.height)
                            row["iou"][name].append(b.iou(gt_box))
                    rec = {"cat": cat, "shots": str(k), "seed": seed,
                           "syn": {n: round(float(np.mean(v)), 4) for n, v in row["syn"].items()},
                           "test": {n: round(float(np.mean(v)), 4) for n, v in row["test"].items()},
                           "area": {n: round(float(np.mean(v)), 4) for n, v in row["area"].items()},
                           "iou": {n: round(float(np.mean(v)), 4) for n, v in row["iou"].items()},
                           "syn_iou": {n: round(float(np.mean(v)), 4) for n, v in row["syn_iou"].items()},
                           "syn_area": {n: round(float(np.mean(v)), 4) for n, v in row["syn_area"].items()}}
                    print(json.dumps(rec), flush=True)
                    out.write(json.dumps(rec) + "\n")
                    out.flush()


def summary(path: str) -> None:
    rows = [json.loads(line) for line in open(path)]
    names = list(rows[0]["test"])
    by = defaultdict(list)
    for r in rows:
        by[(r["shots"], r["cat"])].append(r)
    print("| shots | category | " + " | ".join(names) + " |")
    print("|" + "---|" * (len(names) + 2))
    for shots in sorted({r["shots"] for r in rows}):
        for part in [p for p in ("syn", "syn_iou", "syn_area", "test", "iou", "area") if p in rows[0]]:
            means = defaultdict(list)
            for (sh, cat), rs in sorted(by.items()):
                if sh != shots:
                    continue
                vals = {n: float(np.mean([r[part][n] for r in rs])) for n in names}
                for n in names:
                    means[n].append(vals[n])
                print(f"| {shots} {part} | {cat} | " + " | ".join(f"{vals[n]:.3f}" for n in names) + " |")
            print(f"| {shots} {part} | **mean** | " + " | ".join(f"{np.mean(means[n]):.3f}" for n in names) + " |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--summary")
    ap.add_argument("--shots", default="1,4")
    ap.add_argument("--cats", default="")
    a = ap.parse_args()
    if a.summary:
        summary(a.summary)
    else:
        dump(a.out, a.shots.split(","), a.cats.split(",") if a.cats else None)


if __name__ == "__main__":
    main()

"""Where the look's box goes: box rules compared on synthetic defects (choice) and real defects (check).

For each k-shot group (categories with masks), the product is registered as the package does
(cached 256-px grids, brightness rule, ``vision.learn.learn``); the look's patch map (fused when the
scoring uses self-similarity, else nearest neighbour) gives a box under each rule, scored with the
benchmark's ``box_hit`` (IoU >= 0.5 or the box holds the largest defect region's centroid) against

* synthetic defects made from the references (their masks are known; scored leave-one-out, as
  registration does): what a rule could be chosen on, and
* the anomalous test images (every one, whatever the verdict): the check.

    PYTHONPATH=src python experiments/boxes.py --out /work/scale/boxes3.jsonl            # the final rule set
    PYTHONPATH=src python experiments/boxes.py --out /work/scale/boxes.jsonl --rules first  # the first pass
    PYTHONPATH=src python experiments/boxes.py --summary /work/scale/boxes3.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import calib  # noqa: E402


def rules(which: str = "final"):  # noqa: ANN201 - {name: (patch map, level) -> Box}
    """The box rules compared: ``first`` (the first pass), ``final`` (the narrowed set; ``peak_s2`` is
    what the package does for an answer's box: ``hot_spot_box(..., sigma=BOX_SIGMA)``)."""
    from iad_agent.episode import hot_spot_box
    from iad_agent.vision.grid_ops import gaussian_filter

    def rel(frac):  # noqa: ANN001, ANN202 - region cut part of the way from the map's median to its peak
        def f(m, level):  # noqa: ANN001, ANN202
            peak, med = float(m.max()), float(np.median(m))
            return hot_spot_box(m, max(level, med + frac * (peak - med)))
        return f

    def smooth(sigma, min_size=0.12):  # noqa: ANN001, ANN202 - the whole map blurred (peak and region)
        return lambda m, level: hot_spot_box(gaussian_filter(np.asarray(m, np.float32), sigma=sigma), level, min_size)

    def peak_smoothed(sigma):  # noqa: ANN001, ANN202 - peak of the blurred map, region of the map itself
        return lambda m, level: hot_spot_box(m, level, sigma=sigma)

    def hysteresis(frac, sigma=2.0, gap=0, everything=False):  # noqa: ANN001, ANN202 - peak_s2's peak, region grown through a lower cut
        from iad_agent.types import Box
        from iad_agent.vision.grid_ops import region_at

        def f(m, level):  # noqa: ANN001, ANN202
            m = np.asarray(m, np.float32)
            inner = hot_spot_box(m, level, sigma=sigma)
            seek = gaussian_filter(m, sigma=sigma)
            peak = np.unravel_index(int(np.argmax(seek)), m.shape)
            med = float(np.median(m))
            if not m[peak] > level:
                return inner
            low = med + frac * (level - med)
            above = m > low
            if everything:
                region = above
            else:
                bridged = above.copy()
                for _ in range(gap):  # 8-neighbour dilation bridges gaps of up to 2*gap patches
                    d = bridged.copy()
                    d[1:] |= bridged[:-1]; d[:-1] |= bridged[1:]
                    d2 = d.copy()
                    d2[:, 1:] |= d[:, :-1]; d2[:, :-1] |= d[:, 1:]
                    bridged = d2
                region = region_at(bridged, peak) & above
            b = Box.from_mask(region)
            return b.clamped(0.12) if b is not None else inner
        return f

    current = lambda m, level: hot_spot_box(m, level)  # noqa: E731 - the map's own maximum (the tools' region)
    if which == "first":
        return {
            "current": current, "rel0.5": rel(0.5), "rel0.7": rel(0.7), "smooth1": smooth(1.0),
            "min0.08": lambda m, level: hot_spot_box(m, level, 0.08),
            "min0.20": lambda m, level: hot_spot_box(m, level, 0.20),
            "q99": lambda m, level: hot_spot_box(m, max(level, float(np.quantile(m, 0.99)))),
            "smooth2": smooth(2.0), "smooth1+min0.20": smooth(1.0, 0.20),
        }
    if which == "hysteresis":
        return {"peak_s2": peak_smoothed(2.0), "hyst0.9": hysteresis(0.9), "hyst0.75": hysteresis(0.75),
                "hyst0.5": hysteresis(0.5), "hyst0.25": hysteresis(0.25)}
    if which == "gaps":
        return {"peak_s2": peak_smoothed(2.0), "gap1": hysteresis(1.0, gap=1), "gap2": hysteresis(1.0, gap=2),
                "all": hysteresis(1.0, everything=True), "hyst0.75": hysteresis(0.75),
                "hyst0.75+gap1": hysteresis(0.75, gap=1)}
    return {"current": current, "smooth1": smooth(1.0), "smooth2": smooth(2.0),
            "peak_s1": peak_smoothed(1.0), "peak_s2": peak_smoothed(2.0), "peak_s3": peak_smoothed(3.0)}


def mean_of(values: dict) -> dict:
    return {n: round(float(np.mean(v)), 4) for n, v in values.items()}


def dump(out_path: str, shots: list[str], cats: list[str] | None, which: str) -> None:
    from iad_agent.eval.metrics import box_hit
    from iad_agent.eval.runner import set_threads
    from iad_agent.imageio import load_image
    from iad_agent.types import Box
    from iad_agent.vision.similarity import self_similarity_map
    from iad_agent.vision.synthetic import synthetic_defects

    set_threads(1)
    R = rules(which)
    with open(out_path, "a") as out:
        for cat, k, seed, refs, test, _ in calib.groups(cats, False, 60, shots):
            bad = [s for s in test if s.is_anomalous and s.mask_path is not None]
            if not bad:
                continue
            imgs = [load_image(p) for p in refs]
            config = calib.package_config(refs, imgs)
            bank, cal = calib.learned_bank(refs, config)
            s = bank.scoring
            level = cal.patch_threshold if s.uses_self else (cal.knn_patch_threshold or cal.patch_threshold)

            def look(grid, exclude=None):  # noqa: ANN001, ANN202 - the look's patch map (as PreparedQuery.look)
                knn = bank.patch_distances(grid, exclude=exclude)
                return s.fuse(knn, self_similarity_map(grid)) if s.uses_self else knn

            parts = ("syn", "syn_iou", "syn_area", "test", "iou", "area")
            row = {p: defaultdict(list) for p in parts}
            syn = synthetic_defects(imgs, 16, seed=1)
            grids = calib.extractor(config)([im for im, _, _ in syn])
            for j, ((_, mask, _), g) in enumerate(zip(syn, grids)):  # leave-one-out, as registration scores them
                m = look(np.asarray(g, np.float32), exclude=j % len(refs) if len(refs) > 1 else None)
                for name, rule in R.items():
                    b = rule(m, level)
                    row["syn"][name].append(bool(box_hit(b, mask)))
                    row["syn_iou"][name].append(b.iou(Box.from_mask(mask)))
                    row["syn_area"][name].append(b.width * b.height)
            for smp in bad:
                m = look(calib.grid_of(smp.image_path, config))
                gt = smp.ground_truth_mask()
                for name, rule in R.items():
                    b = rule(m, level)
                    row["test"][name].append(bool(box_hit(b, gt)))
                    row["iou"][name].append(b.iou(Box.from_mask(gt)))
                    row["area"][name].append(b.width * b.height)
            calib.emit(out, {"cat": cat, "shots": str(k), "seed": seed, **{p: mean_of(row[p]) for p in parts}})


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
    ap.add_argument("--rules", choices=["first", "final", "hysteresis", "gaps"], default="final")
    a = ap.parse_args()
    if a.summary:
        summary(a.summary)
    else:
        dump(a.out, a.shots.split(","), a.cats.split(",") if a.cats else None, a.rules)


if __name__ == "__main__":
    main()

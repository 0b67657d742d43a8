"""Input scale chosen per product from good images: the global look at several short sides.

For every k-shot group of the ``iad eval`` protocol (6 dev categories + the unseen ELPV cells),
the product is registered as the package does (aspect kept, one scale for mixed sizes, brightness
matching rule) at each candidate short side, and ``vision.learn.learn`` is run: the synthetic
defects' separation from held-out good images (what a choice from good images can see) and the
test AUROC of the fused global look (what the choice should predict) are written per side, with
the calibrated threshold's false-alarm and miss rates and the CPU ms per extracted test image.

    PYTHONPATH=src python experiments/scale.py dump --out /work/scale/scale.jsonl [--sides 256,320,384]
    PYTHONPATH=src python experiments/scale.py summary /work/scale/scale.jsonl [--margin 0.02]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import calib  # noqa: E402


def dump(out_path: str, cats: list[str] | None, sides: list[int], shots: list[str], max_bad: int) -> None:
    from iad_agent.eval.runner import set_threads
    from iad_agent.vision.normal_bank import image_score
    from iad_agent.vision.scoring import _auroc

    set_threads(1)
    calib.smoothed_self()  # its figures in experiments/README.md predate learn.SELF_RAW
    with open(out_path, "a") as out:
        for cat, k, seed, refs, test, y in calib.groups(cats, True, max_bad, shots):
            base = calib.package_config(refs)
            row = dict(cat=cat, k=len(refs), shots=str(k), seed=seed, syn={}, syn_all={}, test={}, test_knn={},
                       w={}, far={}, miss={}, ms={}, grid={})
            for side in sides:
                config = dataclasses.replace(base, resolution=side)
                t0 = time.process_time()
                mat: dict = {}
                bank, cal = calib.learned_bank(refs, config, material=mat)
                s = bank.scoring
                held, d, _, _ = calib.fused_maps(bank, mat, [])
                v = np.array([image_score(m) for m in held])
                key = str(side)
                row["syn"][key] = round(_auroc(v[~d], v[d]), 4)
                row["syn_all"][key] = s.synthetic_auroc
                row["w"][key] = s.self_weight
                t1 = time.process_time()
                grids = [calib.grid_of(smp.image_path, config) for smp in test]
                row["ms"][key] = round(1000 * (time.process_time() - t1) / len(test), 1)
                row["grid"][key] = list(grids[0].shape[:2])
                fused, plain = [], []
                for smp, g in zip(test, grids):
                    knn = bank.patch_distances(g)
                    plain.append(image_score(knn))
                    smap = calib.self_map_of(smp.image_path, config) if s.uses_self else None
                    fused.append(image_score(s.fuse(knn, smap)))
                fused, plain = np.array(fused), np.array(plain)
                row["test"][key] = round(_auroc(fused[y == 0], fused[y == 1]), 4)
                row["test_knn"][key] = round(_auroc(plain[y == 0], plain[y == 1]), 4)
                thr = cal.threshold
                row["far"][key] = round(float((fused[y == 0] >= thr).mean()), 3)
                row["miss"][key] = round(float((fused[y == 1] < thr).mean()), 3)
                row.setdefault("cpu_s", {})[key] = round(time.process_time() - t0, 1)
            calib.emit(out, row)


def summary(path: str, margin: float) -> None:
    rows = [json.loads(line) for line in open(path)]
    sides = sorted({int(s) for r in rows for s in r["test"]})
    base = str(sides[0])
    by = defaultdict(list)
    for r in rows:
        by[(r["shots"], r["cat"])].append(r)

    def chosen(r: dict) -> str:
        best = base
        for s in map(str, sides[1:]):
            if s in r["syn"] and r["syn"][s] > r["syn"][best] + margin:
                best = s
        return best

    print(f"| shots | category | " + " | ".join(f"test {s}" for s in sides) + " | chosen | " +
          " | ".join(f"syn {s}" for s in sides) + " | chosen sides |")
    print("|" + "---|" * (2 * len(sides) + 4))
    for shots in ("1", "4", "all"):
        means: dict[str, list] = defaultdict(list)
        for (sh, cat), rs in sorted(by.items()):
            if sh != shots:
                continue
            t = {s: np.mean([r["test"][str(s)] for r in rs if str(s) in r["test"]]) for s in sides}
            syn = {s: np.mean([r["syn"][str(s)] for r in rs if str(s) in r["syn"]]) for s in sides}
            ch = np.mean([r["test"][chosen(r)] for r in rs])
            if cat != "elpv":
                for s in sides:
                    means[s].append(t[s])
                means["chosen"].append(ch)
            print(f"| {shots} | {cat} | " + " | ".join(f"{t[s]:.3f}" for s in sides) + f" | {ch:.3f} | " +
                  " | ".join(f"{syn[s]:.3f}" for s in sides) + " | " + ",".join(chosen(r) for r in rs) + " |")
        if means:
            print(f"| {shots} | **dev mean** | " + " | ".join(f"{np.mean(means[s]):.3f}" for s in sides) +
                  f" | {np.mean(means['chosen']):.3f} | | |")
    # CPU per extracted test image relative to the smallest side, where that side's grids were not cached yet
    timed = [r for r in rows if r["ms"].get(base, 0) > 20]
    for s in map(str, sides[1:]):
        ratios = [r["ms"][s] / r["ms"][base] for r in timed if s in r["ms"]]
        if ratios:
            print(f"CPU per extracted image, side {s} / {base}: {min(ratios):.2f}–{max(ratios):.2f}x "
                  f"({len(ratios)} groups extracted afresh at every side)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["dump", "summary"])
    ap.add_argument("path", nargs="?")
    ap.add_argument("--out")
    ap.add_argument("--cats", default="")
    ap.add_argument("--sides", default="256,320,384")
    ap.add_argument("--shots", default="1,4")
    ap.add_argument("--max-bad", type=int, default=60)
    ap.add_argument("--margin", type=float, default=0.02)
    a = ap.parse_args()
    if a.cmd == "dump":
        dump(a.out, a.cats.split(",") if a.cats else None, [int(s) for s in a.sides.split(",")],
             a.shots.split(","), a.max_bad)
    else:
        summary(a.path, a.margin)


if __name__ == "__main__":
    main()

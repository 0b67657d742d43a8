"""The image score's top fraction: synthetic-defect AUROC (what a choice from good images sees) and the
global look's test AUROC (the check) for each fraction, per k-shot group (6 dev categories + ELPV).

    PYTHONPATH=src python experiments/score_fraction.py dump --out /work/wdiag/frac.jsonl   # ~8 min on cached grids
    PYTHONPATH=src python experiments/score_fraction.py summary /work/wdiag/frac.jsonl

``summary`` prints the mean synthetic and test AUROC per fraction (dev categories / ELPV) and what a
per-product choice would give: the fraction whose synthetic AUROC beats today's 1 % by a margin.
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

FRACTIONS = ["0.002", "0.005", "0.01", "0.02", "0.05", "0.1"]


def dump(out_path: str) -> None:
    from iad_agent.eval.plan import draw_references, parse_shots
    from iad_agent.eval.runner import set_threads
    from iad_agent.vision.normal_bank import image_score
    from iad_agent.vision.scoring import _auroc

    set_threads(1)
    with open(out_path, "a") as out:
        for cat, pool, test in calib.categories(None, True, 60):
            for k in parse_shots(["1", "4"]):
                for seed in range(3):
                    refs = draw_references(pool, k, seed, cat)
                    material: dict = {}
                    bank, _ = calib.learned_bank(refs, material=material)
                    held_syn, d, maps, y = calib.fused_maps(bank, material, test)
                    row = dict(cat=cat, k=len(refs), seed=seed, syn={}, test={})
                    for f in FRACTIONS:
                        v = np.array([image_score(m, float(f)) for m in held_syn])
                        row["syn"][f] = round(_auroc(v[~d], v[d]), 4)
                        v = np.array([image_score(m, float(f)) for m in maps])
                        row["test"][f] = round(_auroc(v[y == 0], v[y == 1]), 4)
                    calib.emit(out, row)


def summary(path: str) -> None:
    rows = [json.loads(line) for line in open(path)]
    for k in (1, 4):
        print("shots", k)
        for key in ("syn", "test"):
            per = defaultdict(list)
            for r in rows:
                if r["k"] == k:
                    per[r["cat"]].append([r[key][f] for f in FRACTIONS])
            dev = np.mean([np.mean(v, axis=0) for c, v in per.items() if c != "elpv"], axis=0)
            print("  %-4s dev  " % key + " ".join("%s:%.3f" % fx for fx in zip(FRACTIONS, dev)))
            print("  %-4s elpv " % key + " ".join("%s:%.3f" % fx for fx in zip(FRACTIONS, np.mean(per["elpv"], axis=0))))
    for margin in (0.0, 0.02, 0.05):
        for k in (1, 4):
            per = defaultdict(list)
            for r in rows:
                if r["k"] == k:
                    best = "0.01"
                    for f in FRACTIONS:
                        if r["syn"][f] > r["syn"][best] + margin:
                            best = f
                    per[r["cat"]].append(r["test"][best])
            dev = np.mean([np.mean(v) for c, v in per.items() if c != "elpv"])
            print("per-product choice, margin %.2f, shots %d: test dev %.3f elpv %.3f" % (margin, k, dev, np.mean(per["elpv"])))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("dump").add_argument("--out", required=True)
    sub.add_parser("summary").add_argument("path")
    a = ap.parse_args()
    dump(a.out) if a.cmd == "dump" else summary(a.path)


if __name__ == "__main__":
    main()

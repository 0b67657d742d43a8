"""A 4-shot threshold floored at the highest held-out score, judged on a ``calib.py`` dump.

    python experiments/threshold_floor.py /work/calib1/dump4.jsonl

For each group of the dump (held-out good scores, bank-size factor, test scores and labels) it
prints the false-alarm rate / miss rate / balanced accuracy per category of today's rule
(``threshold_for_fpr(held) * factor``) and of the floored one (``max(that, max(held))``), and the
mean balanced accuracy over the dev categories (ELPV apart).
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict

import numpy as np

from iad_agent.vision.normal_bank import threshold_for_fpr


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path)]
    rules = {"today": lambda held, f: threshold_for_fpr(held, 0.05) * f,
             "floored": lambda held, f: max(threshold_for_fpr(held, 0.05) * f, float(held.max()))}
    for name, rule in rules.items():
        per = defaultdict(list)
        for r in rows:
            held, test, y = np.array(r["held"]), np.array(r["test"]), np.array(r["test_y"])
            t = rule(held, r["factor"])
            far, miss = float((test[y == 0] > t).mean()), float((test[y == 1] <= t).mean())
            per[r["cat"]].append((far, miss, 1 - (far + miss) / 2))
        dev = np.mean([np.mean(v, axis=0)[2] for c, v in per.items() if c != "elpv"])
        cells = " ".join("%s %.2f/%.2f/%.3f" % (c, *np.mean(v, axis=0)) for c, v in sorted(per.items()))
        print(f"{name:8s} dev balanced accuracy {dev:.3f} | {cells}")


if __name__ == "__main__":
    main(sys.argv[1])

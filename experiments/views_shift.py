"""One good image: how far above the augmented views other good parts score, and what threshold rules give.

    PYTHONPATH=src IAD_LAB_CACHE=/work/detect3-results/cache python experiments/calib.py --shots 1 --max-bad 60 --out /work/calib1/dump.jsonl
    PYTHONPATH=src python experiments/views_shift.py /work/calib1/dump.jsonl

The shift (median over the dev products of the ratio of medians, pool / views) and the pool's
spread are measured on the pool (good images that are not references); test labels only judge
the rules. The capped rules need the dump's ``syn_scores`` (``calib.py`` records them).
"""

from __future__ import annotations

import json
import sys
from statistics import NormalDist

import numpy as np

from iad_agent.vision.normal_bank import Calibration, threshold_for_fpr

FPR = 0.05
Z = NormalDist().inv_cdf(1 - FPR)


def views_threshold(r: dict) -> float:
    """The package's threshold from the views' scores (a normal fit for 8 scores)."""
    return threshold_for_fpr(r["held"], FPR)


def judge(rows: list[dict], rule) -> dict:
    """Test false-alarm rate, miss rate and balanced accuracy per category at ``rule(row)``."""
    out: dict[str, list] = {}
    for r in rows:
        t, y, s = rule(r), np.asarray(r["test_y"]), np.asarray(r["test"])
        far, miss = (s[y == 0] >= t).mean(), (s[y == 1] < t).mean()
        out.setdefault(r["cat"], []).append((far, miss, 1 - (far + miss) / 2))
    return {c: np.mean(v, axis=0) for c, v in out.items()}


def main() -> None:
    rows = [json.loads(line) for line in open(sys.argv[1])]
    factor: dict[str, list] = {}
    spread: dict[str, list] = {}
    for r in rows:
        factor.setdefault(r["cat"], []).append(np.log(np.median(r["pool"]) / np.median(r["held"])))
        lp = np.log(np.asarray(r["pool"]))
        spread.setdefault(r["cat"], []).append(np.std(lp - np.median(lp), ddof=1))
    for c, v in factor.items():
        print("%-14s pool/views factor %s" % (c, " ".join("%.2f" % np.exp(x) for x in v)))
    dev = [c for c in factor if c != "elpv"]
    shift = float(np.exp(np.median([np.mean(factor[c]) for c in dev])))
    sigma = float(np.median([np.mean(spread[c]) for c in dev]))
    print("median dev shift x%.3f; pool log sigma %s, median dev %.3f"
          % (shift, {c: round(float(np.mean(v)), 3) for c, v in spread.items()}, sigma))

    def capped(q: float):
        def rule(r: dict) -> float:
            cal = Calibration(FPR, "augmented-views", r["held"], r["held"], views_shift=shift,
                              synthetic_median=float(np.quantile(r["syn_scores"], q)))
            return cal.shifted(views_threshold(r))
        return rule

    candidates = {
        "today": views_threshold,
        "x%.2f" % shift: lambda r: views_threshold(r) * shift,
        "x1.1": lambda r: views_threshold(r) * 1.1,
        "x1.2": lambda r: views_threshold(r) * 1.2,
        "median x shift x exp(z sigma)": lambda r: np.median(r["held"]) * shift * np.exp(Z * sigma),
    }
    if all("syn_scores" in r for r in rows):
        candidates["cap: synthetic median"] = capped(0.5)
        candidates["cap: synthetic lower quartile"] = capped(0.25)
    for name, rule in candidates.items():
        j = judge(rows, rule)
        d = np.mean([j[c] for c in dev], axis=0)
        print("%-30s dev FAR %.2f miss %.2f bal %.3f | elpv %.2f %.2f %.3f | " % (name, *d, *j["elpv"])
              + " ".join("%s %.2f/%.2f" % (c[:5], j[c][0], j[c][1]) for c in dev))


if __name__ == "__main__":
    main()

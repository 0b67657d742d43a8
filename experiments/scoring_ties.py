"""The scoring's self-similarity weight: what registration chooses vs the test AUROC of every weight.

    PYTHONPATH=src python experiments/scoring_ties.py dump --out /work/wdiag/rows.jsonl   # ~6 min, cached grids
    PYTHONPATH=src python experiments/scoring_ties.py rules /work/wdiag/rows.jsonl

``dump``: for each k-shot group of the ``iad eval`` protocol (6 dev categories + ELPV, seeds 0-2)
registers with ``vision.learn.learn`` and records the synthetic AUROC of every candidate weight
(what the choice sees) and the test AUROC of the global look at every weight (test labels read
for the diagnosis only). ``rules``: the test AUROC each tie-breaking rule would get from those
synthetic AUROCs. Grids come from ``experiments/calib.py``'s cache. ``DIAG_CFG`` (JSON) replaces
fields of the feature configuration, e.g. ``DIAG_CFG='{"backbone": "efficientnet-lite1"}'``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import calib  # noqa: E402

from iad_agent.vision.scoring import MARGIN, WEIGHTS  # noqa: E402

W = [str(w) for w in WEIGHTS]


def dump(shots: str, cats: str, out_path: str) -> None:
    from iad_agent.eval.plan import draw_references, parse_shots
    from iad_agent.eval.runner import set_threads
    from iad_agent.vision.normal_bank import image_score
    from iad_agent.vision.scoring import Scoring, _auroc

    set_threads(1)
    calib.smoothed_self()  # its figures in experiments/README.md predate learn.SELF_RAW
    overrides = json.loads(os.environ.get("DIAG_CFG", "{}"))
    with open(out_path, "a") as out:
        for cat, pool, test in calib.categories(cats.split(",") if cats else None, True, 60):
            for k in parse_shots(shots.split(",")):
                for seed in range(3):
                    refs = draw_references(pool, k, seed, cat)
                    config = dataclasses.replace(calib.product_config(refs), **overrides)
                    bank, _ = calib.learned_bank(refs, config)
                    s = bank.scoring
                    y = np.array([int(smp.label) for smp in test])
                    knn = [bank.patch_distances(calib.grid_of(smp.image_path, config)) for smp in test]
                    self_maps = [calib.self_map_of(smp.image_path, config) for smp in test]
                    test_auroc = {}
                    for w in WEIGHTS:
                        sc = Scoring(w, s.knn_level, s.self_level)
                        v = np.array([image_score(sc.fuse(a, b)) for a, b in zip(knn, self_maps)])
                        test_auroc[str(w)] = round(_auroc(v[y == 0], v[y == 1]), 4)
                    row = dict(cat=cat, k=k, seed=seed, w=s.self_weight, syn=s.synthetic_auroc, test=test_auroc, n=len(refs))
                    calib.emit(out, row)


def old_rule(syn: dict) -> str:
    """Ties to the smaller weight; a larger weight must win by ``MARGIN``."""
    best_w, best = W[0], -1.0
    for w in W:
        if syn[w] > best + (MARGIN if float(w) > 0 else 0):
            best_w, best = w, syn[w]
    return best_w


def ties_to_larger(tol: float):
    return lambda syn: [w for w in W if syn[w] >= max(syn.values()) - tol][-1]


def rules(path: str) -> None:
    rows = [json.loads(line) for line in open(path) if line.startswith("{")]
    candidates = {"old": old_rule, "larger0": ties_to_larger(0.0), "larger.01": ties_to_larger(0.01),
                  "larger.02": ties_to_larger(0.02), "larger.05": ties_to_larger(0.05), "w=0.5": lambda syn: "0.5",
                  "oracle": None}
    for k in (1, 4):
        print("shots", k)
        for name, rule in candidates.items():
            per = defaultdict(list)
            for x in rows:
                if x["n"] == k:
                    w = max(x["test"], key=x["test"].get) if rule is None else rule(x["syn"])
                    per[x["cat"]].append(x["test"][w])
            dev = np.mean([np.mean(v) for c, v in per.items() if c != "elpv"])
            print("  %-10s dev %.3f elpv %.3f | " % (name, dev, np.mean(per.get("elpv", [np.nan])))
                  + " ".join("%s %.3f" % (c[:6], np.mean(v)) for c, v in per.items()))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--shots", default="1,4")
    d.add_argument("--cats", default="")
    d.add_argument("--out", required=True)
    r = sub.add_parser("rules")
    r.add_argument("path")
    a = ap.parse_args()
    if a.cmd == "dump":
        dump(a.shots, a.cats, a.out)
    else:
        rules(a.path)


if __name__ == "__main__":
    main()

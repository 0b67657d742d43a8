"""The image score relative to the image's own map level: synthetic-defect AUROC and test AUROC of
score variants on the fused map, per k-shot group (6 dev categories + ELPV).

    PYTHONPATH=src python experiments/score_level.py dump --out /work/level/level.jsonl
    PYTHONPATH=src python experiments/score_level.py summary /work/level/level.jsonl

Variants: ``top`` (today's mean of the top 1 %), ``top/med`` (divided by the map's median), ``top-med``,
``top/q25``, ``top/mean``. A good part shot under other light sits farther from the bank everywhere;
a defect raises only its own patches.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import calib  # noqa: E402

#: ``summary`` also reads brightness.py's dumps, whose two arms are ``plain`` and ``std``: ``VARIANTS=plain,std``.
VARIANTS = os.environ["VARIANTS"].split(",") if os.environ.get("VARIANTS") else ["top", "top/med", "top-med", "top/q25", "top/mean"]


def variants(m: np.ndarray) -> dict[str, float]:
    from iad_agent.vision.normal_bank import image_score

    top = image_score(m, 0.01)
    med = float(np.median(m))
    return {"top": top, "top/med": top / max(med, 1e-6), "top-med": top - med,
            "top/q25": top / max(float(np.quantile(m, 0.25)), 1e-6), "top/mean": top / max(float(m.mean()), 1e-6)}


def dump(out_path: str, cats: list[str] | None) -> None:
    from iad_agent.eval.plan import draw_references, parse_shots
    from iad_agent.eval.runner import set_threads
    from iad_agent.vision.scoring import _auroc

    set_threads(1)
    with open(out_path, "a") as out:
        for cat, pool, test in calib.categories(cats, True, 60):
            for k in parse_shots(["1", "4", "all"]):
                for seed in range(1 if k == "all" else 3):
                    refs = draw_references(pool, k, seed, cat)
                    material: dict = {}
                    bank, _ = calib.learned_bank(refs, material=material)
                    s = bank.scoring
                    held_syn, d, maps, y = calib.fused_maps(bank, material, test)
                    row = dict(cat=cat, k=len(refs), shots=str(k), seed=seed, w=getattr(s, "self_weight", None), syn={}, test={})
                    sv = [variants(m) for m in held_syn]
                    tv = [variants(m) for m in maps]
                    for v in VARIANTS:
                        a = np.array([x[v] for x in sv])
                        row["syn"][v] = round(_auroc(a[~d], a[d]), 4)
                        a = np.array([x[v] for x in tv])
                        row["test"][v] = round(_auroc(a[y == 0], a[y == 1]), 4)
                    calib.emit(out, row)


def summary(path: str) -> None:
    rows = [json.loads(line) for line in open(path)]
    for shots in ("1", "4", "all"):
        print("shots", shots)
        for key in ("syn", "test"):
            per = defaultdict(list)
            for r in rows:
                if r["shots"] == shots:
                    per[r["cat"]].append([r[key][v] for v in VARIANTS])
            dev = np.mean([np.mean(v, axis=0) for c, v in per.items() if c != "elpv"], axis=0)
            print("  %-4s dev  " % key + " ".join("%s:%.3f" % fx for fx in zip(VARIANTS, dev)))
            if per.get("elpv"):
                print("  %-4s elpv " % key + " ".join("%s:%.3f" % fx for fx in zip(VARIANTS, np.mean(per["elpv"], axis=0))))
            if key == "test":
                for c, v in sorted(per.items()):
                    print("     %-14s " % c[:14] + " ".join("%.3f" % x for x in np.mean(v, axis=0)))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("dump")
    p.add_argument("--out", required=True)
    p.add_argument("--cats", default="")
    sub.add_parser("summary").add_argument("path")
    a = ap.parse_args()
    dump(a.out, a.cats.split(",") if a.cats else None) if a.cmd == "dump" else summary(a.path)


if __name__ == "__main__":
    main()

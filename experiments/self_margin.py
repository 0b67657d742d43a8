"""The self weight's margin (scratch): today a larger self-similarity weight must beat the best smaller one by
``scoring.MARGIN`` (0.02 synthetic AUROC), positive weights included. Variant: the margin only for leaving plain
nearest neighbour (0 -> w > 0: self-similarity costs time); among positive weights the best synthetic separation
wins (ties to the smaller). Reports the groups whose weight changes: test AUROC, balanced accuracy and
false-alarm rate at the package's threshold rule, before -> after.

    PYTHONPATH=src python experiments/self_margin.py --shots 4     # and --shots all
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import calib  # noqa: E402


def main() -> None:
    from iad_agent.eval.runner import set_threads
    from iad_agent.vision.normal_bank import image_score
    from iad_agent.vision.scoring import MARGIN, Scoring, _auroc

    ap = argparse.ArgumentParser()
    ap.add_argument("--shots", default="4")
    a = ap.parse_args()
    set_threads(1)
    calib.smoothed_self()  # its figures in experiments/README.md predate learn.SELF_RAW
    for cat, _, seed, refs, test, y in calib.groups(None, True, 100, [a.shots]):
        config = calib.package_config(refs)
        mat: dict = {}
        bank, cal = calib.learned_bank(refs, config=config, material=mat)
        sc = bank.scoring
        aur = {float(k): v for k, v in sc.synthetic_auroc.items()}
        best_pos = max((w for w in aur if w > 0), key=lambda w: (aur[w], -w))
        w2 = best_pos if aur[best_pos] > aur[0.0] + MARGIN else 0.0
        if w2 == sc.self_weight:
            print(cat, seed, f"w {sc.self_weight}: unchanged", flush=True)
            continue
        held = [i for i, d in enumerate(mat["defect"]) if not d]
        tk = [bank.patch_distances(calib.grid_of(s.image_path, config)) for s in test]
        ts = [calib.self_map_of(s.image_path, config) for s in test]
        res = []
        for w in (sc.self_weight, w2):
            s2 = Scoring(w, sc.knn_level, sc.self_level)
            probe = type(cal)(**{**vars(cal), "global_scores": [
                image_score(s2.fuse(mat["knn"][i], mat["self"][i] if w > 0 else None)) for i in held]})
            tf = np.array([image_score(s2.fuse(k, m if w > 0 else None)) for k, m in zip(tk, ts)])
            p = tf >= probe.threshold
            far, miss = p[y == 0].mean(), (~p[y == 1]).mean()
            res.append(f"AUROC {_auroc(tf[y == 0], tf[y == 1]):.3f} bal. acc. {1 - (far + miss) / 2:.3f} FAR {far:.3f}")
        print(cat, seed, f"w {sc.self_weight} -> {w2}:", res[0], "->", res[1], flush=True)


if __name__ == "__main__":
    main()

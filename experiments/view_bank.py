"""One good image: its augmented views as extra normal memory (scratch).

At one shot registration makes 8 slightly shifted / rotated / re-lit views of the good image
(``vision.learn.augmented_views``, seed 0) and scores them as held-out good parts. Here 4 *other*
views (seed 1) are added to the bank as well, and the global look is compared: test image AUROC of
plain knn and of the fused look (the product's self-similarity weight from ``learn``; the knn term
re-levelled on the held-out views against the bigger bank).

    PYTHONPATH=src python experiments/view_bank.py [--cats ...] [--elpv] [--views 4]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import calib  # noqa: E402


def main() -> None:
    from iad_agent.eval.runner import set_threads
    from iad_agent.imageio import load_image
    from iad_agent.vision.learn import augmented_views
    from iad_agent.vision.normal_bank import NormalBank, image_score

    ap = argparse.ArgumentParser()
    ap.add_argument("--cats", default="")
    ap.add_argument("--elpv", action="store_true")
    ap.add_argument("--views", type=int, default=4)
    ap.add_argument("--max-bad", type=int, default=60)
    a = ap.parse_args()
    set_threads(1)
    calib.smoothed_self()  # its figures in experiments/README.md predate learn.SELF_RAW
    for cat, _, seed, refs, test, y in calib.groups(a.cats.split(",") if a.cats else None, a.elpv, a.max_bad, ["1"]):
        config = calib.product_config(refs)  # one image: never brightness-matched
        mat: dict = {}
        bank_a, _ = calib.learned_bank(refs, config, material=mat)
        s = bank_a.scoring
        held_grids = [g for g, d in zip(mat["grids"], mat["defect"]) if not d]
        extra = list(calib.extractor(config)(augmented_views(load_image(refs[0]), n=a.views, seed=1)))
        bank_b = NormalBank(config)
        bank_b.add([calib.grid_of(refs[0], config)] + extra, [str(refs[0])] + [f"view{i}" for i in range(len(extra))])
        level_b = float(np.median([image_score(bank_b.patch_distances(g)) for g in held_grids]))
        s_b = dataclasses.replace(s, knn_level=level_b)
        out = {"knn_a": [], "knn_b": [], "look_a": [], "look_b": []}
        for smp in test:
            g = calib.grid_of(smp.image_path, config)
            smap = calib.self_map_of(smp.image_path, config) if s.uses_self else None
            ka, kb = bank_a.patch_distances(g), bank_b.patch_distances(g)
            out["knn_a"].append(image_score(ka))
            out["knn_b"].append(image_score(kb))
            out["look_a"].append(image_score(s.fuse(ka, smap)))
            out["look_b"].append(image_score(s_b.fuse(kb, smap)))
        calib.emit(None, {"cat": cat, "seed": seed, "w": s.self_weight, **calib.aurocs(out, y)})


if __name__ == "__main__":
    main()

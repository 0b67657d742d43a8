"""An aligned-comparison term in the global look: position-by-position distance to the nearest reference.

Per k-shot group (6 dev categories + ELPV, 3 seeds, at most 60 defective test images): the package's
fused look, the aligned map alone (``normal_bank.aligned_distance`` to the nearest good image by global
descriptor, ±1 cell; its image score over the held-out good images' median aligned score,
``Calibration.aligned_scores``), and the look's map plus ``v`` times the aligned map in those units.
Also the synthetic defects' AUROC for each ``v`` (what a choice from good images would see).

    PYTHONPATH=src:experiments IAD_LAB_CACHE=/work/coarse/cache python experiments/aligned_channel.py --out /work/aligned/a.jsonl
"""

from __future__ import annotations

import argparse

import numpy as np

import calib

VS = (0.0, 0.25, 0.5, 1.0)


def main() -> None:
    from iad_agent.eval.runner import set_threads
    from iad_agent.vision.normal_bank import aligned_distance, image_score
    from iad_agent.vision.scoring import _auroc

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="")
    ap.add_argument("--cats", default="")
    ap.add_argument("--shots", default="1,4")
    ap.add_argument("--summary", default="")
    a = ap.parse_args()
    if a.summary:
        calib.test_means(a.summary)
        return
    set_threads(1)
    calib.smoothed_self()  # its figures in experiments/README.md predate learn.SELF_RAW
    out = open(a.out, "a") if a.out else None
    for cat, k, seed, refs, test, y in calib.groups(a.cats.split(",") if a.cats else None, True, 60, a.shots.split(",")):
        config = calib.package_config(refs)
        mat: dict = {}
        bank, cal = calib.learned_bank(refs, config, material=mat)
        s = bank.scoring

        def aligned(grid, exclude=None):
            near = bank.nearest(grid, 1, exclude=exclude)
            return aligned_distance(grid, bank.grids[near[0][0]].astype(np.float32)) if near else None

        level_maps = [aligned(np.asarray(g, np.float32), ex) for g, ex in zip(mat["grids"], mat["exclude"])]
        d = np.array(mat["defect"])
        held_levels = [image_score(m) for m, dd in zip(level_maps, d) if m is not None and not dd]
        if not held_levels:  # one good image: nothing to compare a view with but itself
            continue
        al = float(np.median(held_levels))
        row = dict(cat=cat, shots=str(k), seed=seed, w=s.self_weight, test={}, syn={})
        looks = [s.fuse(bank.patch_distances(calib.grid_of(smp.image_path, config)),
                        calib.self_map_of(smp.image_path, config) if s.uses_self else None) for smp in test]
        amaps = [aligned(calib.grid_of(smp.image_path, config)) for smp in test]
        hl = [s.fuse(kk, mm if s.uses_self else None) for kk, mm in zip(mat["knn"], mat["self"])]
        for v in VS + ("alone",):
            if v == "alone":
                t = np.array([image_score(m) / al for m in amaps])
                h = np.array([image_score(m) / al if m is not None else np.nan for m in level_maps])
            else:
                t = np.array([image_score(f + v * m / al) for f, m in zip(looks, amaps)])
                h = np.array([image_score(f + v * m / al) if m is not None else np.nan for f, m in zip(hl, level_maps)])
            ok = ~np.isnan(h)
            row["test"][str(v)] = round(_auroc(t[y == 0], t[y == 1]), 4)
            row["syn"][str(v)] = round(_auroc(h[ok & ~d], h[ok & d]), 4)
        calib.emit(out, row)


if __name__ == "__main__":
    main()

"""A second, coarser input scale beside the package's: does it see large, low-contrast defects?

Magnetic tile's "uneven" defects (a quarter of the tile shaded differently) score near chance at
the package's scale (short side 256 px; ``experiments/README.md``, *Magnetic tile: why the maps
are poor*). Here each k-shot group of the ``iad eval`` protocol (6 dev categories + ELPV) is
registered as the package does at the package's side and at a coarser one; each image's fused score
is divided by the held-out good images' mean at that scale (what registration already computes), and
the two are combined (max, mean, geometric mean). Writes one JSON row per group: test AUROC of each
variant, and the synthetic defects' AUROC of each (what a choice from good images could see).

    PYTHONPATH=src:experiments python experiments/coarse.py dump --out /work/coarse/coarse.jsonl --sides 256,128
    PYTHONPATH=src:experiments python experiments/coarse.py summary /work/coarse/coarse.jsonl
"""

from __future__ import annotations

import dataclasses

import numpy as np

import calib


def combos(r: dict[str, np.ndarray], base: str, coarse: str) -> dict[str, np.ndarray]:
    a, b = r[base], r[coarse]
    return {base: a, coarse: b, "max": np.maximum(a, b), "mean": (a + b) / 2, "geo": np.sqrt(a * b),
            "geo3": a ** 0.75 * b ** 0.25}


def dump(out_path: str, cats: list[str] | None, sides: list[int], shots: list[str], max_bad: int) -> None:
    from iad_agent.eval.runner import set_threads
    from iad_agent.vision.normal_bank import image_score
    from iad_agent.vision.scoring import _auroc

    set_threads(1)
    calib.smoothed_self()  # its figures in experiments/README.md predate learn.SELF_RAW
    base, coarse = str(sides[0]), str(sides[1])
    with open(out_path, "a") as out:
        for cat, k, seed, refs, test, y in calib.groups(cats, True, max_bad, shots):
            cfg0 = calib.package_config(refs)
            test_r, syn_r, syn_d, row = {}, {}, None, dict(cat=cat, shots=str(k), seed=seed, w={})
            for side in sides:
                config = dataclasses.replace(cfg0, resolution=side)
                mat: dict = {}
                bank, cal = calib.learned_bank(refs, config, material=mat)
                s = bank.scoring
                held, d, maps, _ = calib.fused_maps(bank, mat, test)
                level = float(np.mean(cal.global_scores))
                syn_r[str(side)] = np.array([image_score(m) for m in held]) / level
                syn_d = d
                test_r[str(side)] = np.array([image_score(m) for m in maps]) / level
                row["w"][str(side)] = s.self_weight
            row["test"] = {n: round(_auroc(v[y == 0], v[y == 1]), 4) for n, v in combos(test_r, base, coarse).items()}
            row["syn"] = {n: round(_auroc(v[~syn_d], v[syn_d]), 4) for n, v in combos(syn_r, base, coarse).items()}
            if cat == "magnetic_tile":
                types = [smp.defect_type for smp in test]
                row["types"] = {}
                for t in sorted({t for t, l in zip(types, y) if l}):
                    sel = np.array([tt == t for tt in types])
                    row["types"][t] = {n: round(_auroc(v[y == 0], v[sel]), 3)
                                       for n, v in combos(test_r, base, coarse).items()}
            calib.emit(out, row)


def summary(path: str) -> None:
    calib.test_means(path)


def main() -> None:
    ap, d = calib.dump_summary_parser()
    d.add_argument("--sides", default="256,128")
    a = ap.parse_args()
    if a.cmd == "dump":
        dump(a.out, a.cats, [int(x) for x in a.sides.split(",")], a.shots, a.max_bad)
    else:
        summary(a.path)


if __name__ == "__main__":
    main()

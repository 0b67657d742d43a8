"""An image-level channel for logical anomalies (scratch): distance of a pooled descriptor to the nearest reference.

Each cached feature grid is pooled (mean, or mean and std, over its patches, L2-normalised); the
channel is ``1 − max cosine`` to the references, relative to the references' own leave-one-out
level (at one shot: the test median, a diagnosis only). It is reported alone and fused with the
global look (``log look + w · log channel``). Reads the look's test scores from a
``calib.py --package`` dump of the same groups.

    PYTHONPATH=src python experiments/global_descriptor.py --dump /work/thr/dump.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import calib  # noqa: E402


def descriptor(grid: np.ndarray, kind: str) -> np.ndarray:
    f = grid.reshape(-1, grid.shape[-1])
    d = f.mean(0) if kind == "mean" else np.concatenate([f.mean(0), f.std(0)])
    return d / (np.linalg.norm(d) + 1e-8)


def main() -> None:
    from iad_agent.eval.runner import set_threads
    from iad_agent.vision.scoring import _auroc

    ap = argparse.ArgumentParser()
    ap.add_argument("--dump", required=True)
    a = ap.parse_args()
    set_threads(1)
    rows = {(r["cat"], str(r["shots"]), r["seed"]): r for r in map(json.loads, open(a.dump))}
    res: dict = {}
    for cat, k, seed, refs, test, y in calib.groups(None, True, 100, ["1", "4"]):
        r = rows.get((cat, str(k), seed))
        if r is None:
            continue
        config = calib.package_config(refs)
        ref_grids = [calib.grid_of(p, config) for p in refs]
        test_grids = [calib.grid_of(s.image_path, config) for s in test]
        look = np.array(r["test"])
        out = {"look": _auroc(look[y == 0], look[y == 1])}
        for kind in ("mean", "meanstd"):
            R = np.stack([descriptor(g, kind) for g in ref_grids])
            d = 1 - (np.stack([descriptor(g, kind) for g in test_grids]) @ R.T).max(1)
            level = (np.mean([1 - np.delete(R @ R[i], i).max() for i in range(len(refs))]) if len(refs) > 1
                     else np.median(d))
            out[kind] = _auroc(d[y == 0], d[y == 1])
            for w in (0.1, 0.25, 0.5):
                f = np.log(look) + w * np.log(d / level + 1e-6)
                out[f"{kind} w{w}"] = _auroc(f[y == 0], f[y == 1])
        res.setdefault(str(k), {}).setdefault(cat, []).append(out)
    for k, cats in res.items():
        for key in next(iter(cats.values()))[0]:
            per = {c: float(np.mean([o[key] for o in v])) for c, v in cats.items()}
            dev = np.mean([v for c, v in per.items() if c != "elpv"])
            print(f"{k} shots {key:14s} dev {dev:.3f} ELPV {per.get('elpv', float('nan')):.3f} | "
                  + " ".join(f"{c[:4]} {v:.3f}" for c, v in per.items()))


if __name__ == "__main__":
    main()

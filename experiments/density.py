"""Nearest-neighbour distance relative to the bank's own local spread (scratch).

score(q) = d(q, m*) / (r(m*) + c), m* the nearest good patch, r(m) the distance of m to its nearest
good patch from another image (one good image: from the same image outside its 5x5 neighbourhood),
c = median r. Plain knn vs this, test image AUROC, cached 256-px grids (package registration config).

    PYTHONPATH=src python experiments/density.py --shots 1,4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import calib  # noqa: E402


def spread(bank) -> np.ndarray:  # noqa: ANN001
    mem, origin = bank.memory, bank.origin
    k = min(64, len(mem))
    d, idx = bank._index.search(mem, k)
    other = origin[np.maximum(idx, 0)] != origin[:, None]
    if len(bank) == 1:  # same image, outside the 5x5 neighbourhood
        h, w, _ = bank.grids[0].shape
        pos = np.arange(len(mem))  # no coreset at 1 image
        y, x = pos // w, pos % w
        ny, nx = y[np.maximum(idx, 0)], x[np.maximum(idx, 0)]
        other = (np.abs(ny - y[:, None]) > 2) | (np.abs(nx - x[:, None]) > 2)
    first = other.argmax(1)
    r = np.sqrt(np.maximum(d[np.arange(len(mem)), first], 0))
    r[~other.any(1)] = np.sqrt(np.maximum(d[~other.any(1), -1], 0))
    return r


def main() -> None:
    from iad_agent.eval.runner import set_threads
    from iad_agent.vision.normal_bank import image_score

    ap = argparse.ArgumentParser()
    ap.add_argument("--shots", default="1,4")
    ap.add_argument("--cats", default="")
    ap.add_argument("--max-bad", type=int, default=60)
    a = ap.parse_args()
    set_threads(1)
    for cat, k, seed, refs, test, y in calib.groups(a.cats.split(",") if a.cats else None, True, a.max_bad,
                                                    a.shots.split(",")):
        config = calib.package_config(refs)
        bank = calib.plain_bank(refs, config)
        r = spread(bank)
        c = float(np.median(r))
        out = {"plain": [], "ratio": [], "ratio_c2": [], "sub": []}
        for s in test:
            g = calib.grid_of(s.image_path, config)
            q = np.ascontiguousarray(g.reshape(-1, g.shape[-1]), dtype=np.float32)
            d, idx = bank._index.search(q, 1)
            d = np.sqrt(np.maximum(d[:, 0], 0))
            rr = r[idx[:, 0]]
            out["plain"].append(image_score(d))
            out["ratio"].append(image_score(d / (rr + c)))
            out["ratio_c2"].append(image_score(d / (rr + 2 * c)))
            out["sub"].append(image_score(np.maximum(d - 0.5 * rr, 0)))
        calib.emit(None, {"cat": cat, "shots": str(k), "seed": seed, **calib.aurocs(out, y)})


if __name__ == "__main__":
    main()

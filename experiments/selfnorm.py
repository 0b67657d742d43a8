"""Self-similarity normalised position-wise by the references' own self-similarity maps.

    python experiments/selfnorm.py --cats grid,hazelnut
"""
import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import lab  # noqa: E402
from iad_agent.vision.normal_bank import resize_grid  # noqa: E402

ap = argparse.ArgumentParser()
ap.add_argument("--cats", default="")
ap.add_argument("--elpv", action="store_true")
ap.add_argument("--mode", default="aspect")
ap.add_argument("--side", type=int, default=256)
a = ap.parse_args()
cfg = lab.Cfg(mode=a.mode, side=a.side)
for cat in lab.categories(a.elpv, a.cats.split(",") if a.cats else None):
    tg = [lab.grid(s.image_path, cfg) for s in cat.test]
    y = [s.label for s in cat.test]
    ts = [lab.self_map(g) for g in tg]
    res = {}
    for k, seed, refs in lab.groups(cat, (1, 4, "all")):
        rs = [lab.self_map(lab.grid(p, cfg)) for p in refs[:8]]
        def ring(shape, cap=4):
            h, w = shape
            yy, xx = np.mgrid[0:h, 0:w]
            return np.minimum(np.minimum(np.minimum(yy, h - 1 - yy), np.minimum(xx, w - 1 - xx)), cap)

        def ringnorm(m, cap=4):
            lv = np.zeros(cap + 1)
            for r in rs:
                rr = ring(r.shape, cap)
                lv += np.array([r[rr == i].mean() for i in range(cap + 1)])
            lv /= len(rs)
            return m / lv[ring(m.shape, cap)]

        out = {}
        for name, fn in {
            "ring": ringnorm,
            "crop": lambda m: m[2:-2, 2:-2],
            "self": lambda m: m,
            "norm": lambda m: m / np.mean([resize_grid(r[..., None], m.shape)[..., 0] for r in rs], 0),
            "sub": lambda m: m - np.mean([resize_grid(r[..., None], m.shape)[..., 0] for r in rs], 0),
            
        }.items():
            out[name] = lab.auroc(y, [lab.top_mean(fn(m)) for m in ts])
        res.setdefault(k, []).append(out)
    for k, rows in res.items():
        print(cat.name, k, {n: round(float(np.mean([r[n] for r in rows])), 3) for n in rows[0]}, flush=True)

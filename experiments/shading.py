"""Does a coarse brightness layout see magnetic tile's "uneven" shading? (scratch diagnosis; test labels read)

    PYTHONPATH=src:experiments python experiments/shading.py

For every k-shot group: each image's luminance, divided by its own mean, box-averaged to a G×G layout;
an image's *shading distance* = min over references of the mean (or max) |log ratio| of the two layouts;
the *reference-free* unevenness = std of its own log layout. AUROC per category (and per defect type on
magnetic tile).
"""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

import calib  # noqa: E402
from iad_agent.vision.scoring import _auroc  # noqa: E402

G = 8
_cache: dict = {}


def layout(path: Path, g: int = G, border: float = 0.0) -> np.ndarray:
    key = (str(path), g, border)
    if key not in _cache:
        im = Image.open(path).convert("L")
        if border:
            w, h = im.size
            im = im.crop((int(w * border), int(h * border), int(w * (1 - border)), int(h * (1 - border))))
        a = np.asarray(im.resize((g, g), Image.Resampling.BOX), np.float32) + 1.0
        _cache[key] = np.log(a / a.mean())
    return _cache[key]


def main() -> None:
    res = defaultdict(list)
    types = defaultdict(list)
    for cat, k, seed, refs, test, y in calib.groups(None, True, 100, ["1", "4"]):
        R = [layout(p) for p in refs]
        Q = [layout(s.image_path) for s in test]
        dmean = np.array([min(np.abs(q - r).mean() for r in R) for q in Q])
        dmax = np.array([min(np.abs(q - r).max() for r in R) for q in Q])
        free = np.array([q.std() for q in Q])
        a = [_auroc(v[y == 0], v[y == 1]) for v in (dmean, dmax, free)]
        res[(cat, k)].append(a)
        if cat == "magnetic_tile":
            for t in sorted({s.defect_type for s in test if s.label}):
                sel = np.array([s.label == 0 or s.defect_type == t for s in test])
                types[(t, k)].append([_auroc(v[sel & (y == 0)], v[sel & (y == 1)]) for v in (dmean, dmax, free)])
    print("category shots: AUROC of shading distance (mean |log|), (max |log|), reference-free std")
    for key, v in sorted(res.items()):
        print(key, np.round(np.mean(v, 0), 3))
    for key, v in sorted(types.items()):
        print("magnetic_tile", key, np.round(np.mean(v, 0), 3))


if __name__ == "__main__":
    main()

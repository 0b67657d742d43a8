"""Nearest neighbour within a window around the patch's own place (global look; scratch).

    WINDOW=0.25 PYTHONPATH=src:experiments OMP_NUM_THREADS=1 IAD_LAB_CACHE=/work/coarse/cache \
        python experiments/window_knn.py cats [shots] > OUT.jsonl

Each query patch is matched only to good patches whose place (row and column as fractions of their
grid) lies within ``WINDOW`` of its own: a part that is present but in the wrong place (a logical
anomaly: a misplaced label, a missing or shifted component) finds no match, while a texture, which
repeats inside any window, scores as with the whole image. ``WINDOW=0`` (or unset): the package as
it is (plain search over the bank). The product is registered as the package does (its
configuration with the patch-length cap, ``learn``), on the cached grids; the search reads every
patch of the references (no coreset). Rows as ``feature_scale.py``.
"""
import os, sys
import numpy as np
sys.path.insert(0, 'experiments')
import calib
from iad_agent.eval.runner import set_threads
from iad_agent.vision.normal_bank import NormalBank

set_threads(1)
WINDOW = float(os.environ.get('WINDOW', '0') or 0)


def _places(h, w):
    yy, xx = np.divmod(np.arange(h * w), w)
    return (yy + 0.5) / h, (xx + 0.5) / w


def windowed(self, grid, exclude=None):
    h, w, c = grid.shape
    q = np.ascontiguousarray(grid.reshape(-1, c), dtype=np.float32)
    qy, qx = _places(h, w)
    qq = (q * q).sum(1)
    skip = set(np.atleast_1d(exclude).tolist()) if exclude is not None else set()
    best = np.full(h * w, np.inf, np.float32)
    for i, g in enumerate(self.grids):
        if i in skip:
            continue
        H, W, _ = g.shape
        r = np.ascontiguousarray(np.asarray(g, np.float32).reshape(-1, c))
        d = qq[:, None] - 2 * (q @ r.T) + (r * r).sum(1)[None]
        ry, rx = _places(H, W)
        far = (np.abs(qy[:, None] - ry[None]) > WINDOW) | (np.abs(qx[:, None] - rx[None]) > WINDOW)
        d[far] = np.inf
        np.minimum(best, d.min(1), out=best)
    if not np.isfinite(best).all():  # no good patch inside the window (a tiny grid): the whole image
        raise RuntimeError('empty window')
    return np.sqrt(np.maximum(best, 0)).reshape(h, w)


if WINDOW > 0:
    _plain, _plain_leave, _add = NormalBank.patch_distances, NormalBank.leave_out_distances, NormalBank.add

    def _add_marked(self, grids, paths):  # one image's half against the other (learn.split_scores): plain search
        self.window = 0.0 if list(paths) == ['half'] and os.environ.get('SPLIT_PLAIN', '1') == '1' else WINDOW
        return _add(self, grids, paths)

    NormalBank.add = _add_marked
    NormalBank.patch_distances = lambda self, grid, exclude=None: (
        windowed(self, grid, exclude) if getattr(self, 'window', 0) > 0 else _plain(self, grid, exclude))
    NormalBank.leave_out_distances = lambda self, grid, excludes, k=32: (
        [windowed(self, grid, e) for e in excludes] if getattr(self, 'window', 0) > 0 else _plain_leave(self, grid, excludes, k))

if __name__ == '__main__':
    cats = sys.argv[1].split(',')
    shots = sys.argv[2].split(',') if len(sys.argv) > 2 else ['1', '4', 'all']
    calib.print_look_rows(cats, shots, window=WINDOW)

"""Nearest neighbour in whitened feature space (global look; scratch).

    WHITEN=0.1 PYTHONPATH=src:experiments OMP_NUM_THREADS=1 IAD_LAB_CACHE=/work/coarse/cache \
        python experiments/whiten.py cats [shots] > OUT.jsonl

The bank fits the mean and covariance of its good patches (shrunk toward a multiple of the identity
by ``WHITEN``, the shrinkage) and searches in the whitened space ``(x − μ) Σ^{-1/2}``: a change along
a direction in which good patches hardly vary (a subtle texture change, a faint crack) counts more than
one along a direction in which they vary a lot (a Mahalanobis distance with one covariance for all
places, as in Gaussian AD / PaDiM without the per-place statistics). The self-similarity term is left
as it is. ``WHITEN=0`` (or unset): the package as it is. Rows as ``window_knn.py``.
"""
import os, sys
import numpy as np
import faiss
sys.path.insert(0, 'experiments')
import calib
from iad_agent.eval.runner import set_threads
from iad_agent.vision.normal_bank import NormalBank

set_threads(1)
SHRINK = float(os.environ.get('WHITEN', '0') or 0)


def _fit(memory):
    mu = memory.mean(0)
    x = memory - mu
    cov = (x.T @ x) / max(1, len(x) - 1)
    c = cov.shape[0]
    cov = (1 - SHRINK) * cov + SHRINK * np.trace(cov) / c * np.eye(c)
    vals, vecs = np.linalg.eigh(cov)
    w = vecs @ np.diag(1 / np.sqrt(np.maximum(vals, 1e-12))) @ vecs.T
    return mu.astype(np.float32), w.astype(np.float32)


if SHRINK > 0:
    _build_plain = NormalBank._build_indexes

    def _build(self):  # the package's indexes (descriptors included), then the patch index in whitened space
        _build_plain(self)
        self._mu, self._w = _fit(self.memory.astype(np.float64))
        self._wmem = np.ascontiguousarray((self.memory - self._mu) @ self._w, np.float32)
        self._index = faiss.IndexFlatL2(self._wmem.shape[1])
        self._index.add(self._wmem)

    def _tx(self, grid):
        h, w, c = grid.shape
        return np.ascontiguousarray(((grid.reshape(-1, c).astype(np.float32) - self._mu) @ self._w).reshape(h, w, c))

    _pd, _lo = NormalBank.patch_distances, NormalBank.leave_out_distances

    def _search_without(self, q, exclude):
        keep = ~np.isin(self.origin, np.atleast_1d(np.asarray(exclude, dtype=np.int64)))
        index = faiss.IndexFlatL2(q.shape[1])
        index.add(self._wmem[keep])
        return index.search(q, 1)[0][:, 0]

    NormalBank._build_indexes = _build
    NormalBank._search_without = _search_without
    NormalBank.patch_distances = lambda self, grid, exclude=None: _pd(self, _tx(self, grid), exclude)
    NormalBank.leave_out_distances = lambda self, grid, excludes, k=32: _lo(self, _tx(self, grid), excludes, k)

if __name__ == '__main__':
    cats = sys.argv[1].split(',')
    shots = sys.argv[2].split(',') if len(sys.argv) > 2 else ['1', '4', 'all']
    calib.print_look_rows(cats, shots, whiten=SHRINK)

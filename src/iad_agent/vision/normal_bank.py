"""``NormalBank``: the memory of good parts of one product (PatchCore / AnomalyDINO style).

It keeps, for every registered good image, its patch-feature grid (float16) and a global
descriptor, and a faiss index over a coreset of all their patches. From it come

* the anomaly heat map of a query (distance of each patch to its nearest normal patch),
* the image score (mean of the top 1 % patch distances),
* the nearest good images of a query (for the ``ComparativeRetriever``),
* calibration scores of *held-out normals* (leave-one-out, or augmented views when only one
  good image exists), from which thresholds are set for a chosen false-alarm rate — using
  good images only.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist

import faiss
import numpy as np

from iad_agent.imageio import atomic_write_bytes, atomic_write_text
from iad_agent.vision.features import FeatureConfig
from iad_agent.vision.grid_ops import gaussian_filter, resize_bilinear, upsample

log = logging.getLogger(__name__)

TOP_FRACTION = 0.01  # image score = mean of the top 1 % patch distances
#: The least spread of good parts' scores a threshold assumes, as a fraction of their mean.
SPREAD_FLOOR = 0.05
#: The false-alarm rate at which a one-good-image threshold is tied to the synthetic defects' median and
#: the split score (``Calibration.synthetic_level``); other rates follow the views' normal fit from there.
LEVEL_FPR = 0.05


def image_score(distance_map: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """Mean of the highest ``fraction`` of the values (at least one).

    >>> image_score(np.arange(200.0), 0.01)
    198.5
    """
    flat = np.asarray(distance_map, dtype=np.float64).ravel()
    k = max(1, int(math.ceil(flat.size * fraction)))
    return float(np.partition(flat, flat.size - k)[flat.size - k :].mean())


def threshold_for_fpr(scores: Sequence[float], fpr: float, prior_spread: float = 0.0) -> float:
    """Decision threshold expected to flag a fraction ``fpr`` of good parts.

    With at least ``2 / fpr`` held-out normal scores the empirical ``1 - fpr`` quantile is used;
    with fewer, a normal distribution is fitted (std floored at 5 % of the mean so that two
    near-identical scores do not give a threshold on a knife edge). ``prior_spread`` > 0: too few
    scores to estimate their spread at all; the std is taken as that fraction of their mean.

    >>> round(threshold_for_fpr([1.0, 1.0, 1.0], 0.05), 4)
    1.0822
    >>> round(threshold_for_fpr([0.8, 1.0, 1.2], 0.05, prior_spread=0.05), 4)
    1.0822
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size == 0:
        raise ValueError("no calibration scores")
    if prior_spread > 0:
        return float(s.mean() * (1 + NormalDist().inv_cdf(1 - fpr) * prior_spread))
    if s.size >= 2 / fpr:
        return float(np.quantile(s, 1 - fpr, method="higher"))
    std = max(float(s.std(ddof=1)) if s.size > 1 else 0.0, SPREAD_FLOOR * abs(float(s.mean())))
    return float(s.mean() + NormalDist().inv_cdf(1 - fpr) * std)  # the stdlib's: scipy.stats costs a second to import


#: Default bound on a bank's searchable patches (its greedy coreset). 10,000 rows keep every patch
#: of up to 9 good images of 256 px and a fifth of 50; registering 50 images builds the coreset in
#: 1.3 s instead of 2.1 s (16,384) and every search (calibration, each inspection) is 40 % smaller.
MAX_PATCHES = 10_000


def greedy_coreset(features: np.ndarray | Sequence[np.ndarray], n: int, seed: int = 0, proj_dim: int = 32) -> np.ndarray:
    """Indices of an approximate greedy k-center coreset (PatchCore), on a random projection.

    Each iteration adds the point farthest from the selected set; distances are updated with
    one matrix-vector product (``|x|² − 2x·c + |c|²``). The projection is small (32 dims) so
    the working set stays in cache. The points are held transposed and scaled by −2
    (``(dim, m)``, exact in floating point): the product then streams over contiguous rows, half
    the time of the row-major one, and one pass (the ×2) is saved; about 0.1 ms per selected
    point for 50k patches, the same points selected.
    ``features`` may be a list of row blocks (e.g. float16 feature grids), indexed as if
    concatenated: only their 32-dim projection is ever held whole (once, transposed), never a
    float32 copy of all patches (600 MB for 200 mixed-size good images).
    """
    blocks = [features] if isinstance(features, np.ndarray) else list(features)
    m = sum(b.shape[0] for b in blocks)
    if n >= m:
        return np.arange(m)
    rng = np.random.default_rng(seed)
    dim = blocks[0].shape[1]
    proj = None
    if dim > proj_dim:
        proj = rng.standard_normal((dim, proj_dim)).astype(np.float32) / np.float32(math.sqrt(proj_dim))
    # -2·xᵀ filled block by block: no whole-size copy besides it (two of them were the registration's
    # memory peak: 1M patches of 200 good images → 130 MB each); scaling by a power of two is exact
    xt = np.empty((proj_dim if proj is not None else dim, m), dtype=np.float32)
    sq = np.empty(m, dtype=np.float32)
    start = 0
    for b in blocks:
        xb = np.asarray(b, dtype=np.float32)
        if proj is not None:
            xb = xb @ proj
        sq[start : start + xb.shape[0]] = (xb * xb).sum(1)
        np.multiply(xb.T, np.float32(-2), out=xt[:, start : start + xb.shape[0]])
        start += xb.shape[0]
    del xb
    selected = np.empty(n, dtype=np.int64)
    nxt = int(rng.integers(m))
    dist = np.full(m, np.inf, dtype=np.float32)
    d = np.empty(m, dtype=np.float32)  # one buffer: no allocation (and page faults) per selected point
    for i in range(n):
        selected[i] = nxt
        np.dot(xt[:, nxt] * np.float32(-0.5), xt, out=d)  # -2 x·c
        np.add(sq, d, out=d)  # |x|² - 2 x·c + |c|², in place, in the same order of operations
        np.add(d, sq[nxt], out=d)
        np.minimum(dist, d, out=dist)
        nxt = int(dist.argmax())
    return np.sort(selected)


def _take_rows(blocks: Sequence[np.ndarray], rows: np.ndarray) -> np.ndarray:
    """``np.concatenate(blocks)[rows]`` as float32, without concatenating the blocks (``rows`` sorted)."""
    out = np.empty((len(rows), blocks[0].shape[1]), dtype=np.float32)
    start = 0
    for b in blocks:
        lo, hi = np.searchsorted(rows, [start, start + b.shape[0]])
        out[lo:hi] = b[rows[lo:hi] - start]
        start += b.shape[0]
    return out


def aligned_distance(query: np.ndarray, reference: np.ndarray, radius: int = 1) -> np.ndarray:
    """Per-position feature distance to the same place (± ``radius`` patches) of a reference.

    Unlike nearest-neighbour search over all patches, this notices a *correct-looking* part in
    the wrong place (a misplaced transistor, a missing label): a logical anomaly.
    """
    h, w, _ = query.shape
    q = query.astype(np.float32)
    reference = resize_grid(reference, (h, w))
    r = np.pad(reference.astype(np.float32), ((radius, radius), (radius, radius), (0, 0)), mode="edge")
    best = np.full((h, w), np.inf, dtype=np.float32)
    for dy in range(2 * radius + 1):
        for dx in range(2 * radius + 1):
            d = np.linalg.norm(q - r[dy : dy + h, dx : dx + w], axis=-1)
            np.minimum(best, d, out=best)
    return best


def resize_grid(grid: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A feature grid bilinearly resampled to ``shape`` (rows, columns); unchanged if it has it."""
    if tuple(grid.shape[:2]) == tuple(shape):
        return grid
    return np.ascontiguousarray(resize_bilinear(np.asarray(grid, dtype=np.float32)[None], tuple(shape))[0])


@dataclass
class Calibration:
    """Scores of held-out good images and the thresholds derived from them.

    ``global_scores`` are under the product's scoring (see :mod:`iad_agent.vision.scoring`);
    ``knn_scores`` under plain nearest-neighbour distance (the ``knn`` baseline's threshold).
    Calibrations saved before the two existed have only ``global_scores`` (plain knn then).
    Leave-one-out scores come from one good image fewer than the inspector has; the
    ``*_bank_size_factor`` (≤ 1) carries the held-out scores one image further, from the drop
    measured between leave-two-out and leave-one-out (see :mod:`iad_agent.vision.learn`).
    ``prior_spread`` > 0 (set by :func:`iad_agent.vision.learn.learn` when too few good images were
    held out to measure their spread): the thresholds are ``mean · (1 + z · prior_spread)`` of the
    held-out scores, without the bank-size factor; 0 (and every calibration stored before it
    existed): the fitted normal distribution above.
    ``synthetic_level`` > 0 (one good image): at false-alarm rate :data:`LEVEL_FPR` the threshold is
    ``synthetic_level · √(synthetic_median · split_score)`` (``synthetic_level · synthetic_median``
    where ``split_score`` is 0: an image too small to cut in two, or a product stored before the
    split score existed), and other rates scale it as the views' normal fit scales; 0 (products
    stored before it existed): the views' fit moved by :meth:`shifted`.
    """

    fpr: float
    method: str  # "leave-one-out" or "augmented-views"
    global_scores: list[float] = field(default_factory=list)
    aligned_scores: list[float] = field(default_factory=list)
    patch_threshold: float = 0.0
    knn_scores: list[float] = field(default_factory=list)
    knn_patch_threshold: float = 0.0
    bank_size_factor: float = 1.0
    knn_bank_size_factor: float = 1.0
    views_shift: float = 1.0
    synthetic_median: float = 0.0
    prior_spread: float = 0.0
    synthetic_level: float = 0.0
    split_score: float = 0.0

    def shifted(self, base: float) -> float:
        """With one good image: the views' threshold ``base`` moved toward where other good parts lie.

        ``min(base · views_shift, max(base, synthetic_median))``: up by ``views_shift`` (how far
        other good parts score above augmented views, see :mod:`iad_agent.vision.learn`), but never
        above the median of the product's own synthetic defects, so that at least half of them stay
        caught. ``views_shift`` 1 (leave-one-out, or a product stored before it existed): ``base``.
        """
        if self.views_shift <= 1.0 or self.synthetic_median <= 0:
            return base
        return min(base * self.views_shift, max(base, self.synthetic_median))

    def threshold_at(self, fpr: float) -> float:
        """The verdict's threshold for false-alarm rate ``fpr`` (:attr:`threshold` at the stored rate)."""
        if self.prior_spread > 0:
            return threshold_for_fpr(self.global_scores, fpr, self.prior_spread)
        base = threshold_for_fpr(self.global_scores, fpr) * self.bank_size_factor
        if self.synthetic_level > 0 and self.synthetic_median > 0:
            at_level = threshold_for_fpr(self.global_scores, LEVEL_FPR) * self.bank_size_factor
            level = self.synthetic_median if self.split_score <= 0 else math.sqrt(self.synthetic_median * self.split_score)
            return base * self.synthetic_level * level / at_level
        return self.shifted(base)

    @property
    def threshold(self) -> float:
        return self.threshold_at(self.fpr)

    @property
    def knn_threshold(self) -> float:
        if not self.knn_scores:
            return self.threshold
        if self.prior_spread > 0:
            return threshold_for_fpr(self.knn_scores, self.fpr, self.prior_spread)
        return threshold_for_fpr(self.knn_scores, self.fpr) * self.knn_bank_size_factor

    @property
    def aligned_threshold(self) -> float:
        return threshold_for_fpr(self.aligned_scores, self.fpr)


class NormalBank:
    """Patch memory of the good images of one product, with faiss search and calibration.

    Args:
        config: the feature configuration the stored features were extracted with.
        max_patches: the coreset size bound on the searchable memory (memory stays bounded
            however many good images are added).
        seed: seed of the coreset's random projection and start point.
    """

    def __init__(self, config: FeatureConfig | None = None, max_patches: int | None = None, seed: int = 0) -> None:
        self.config = config or FeatureConfig()
        self.max_patches = MAX_PATCHES if max_patches is None else max_patches
        self.seed = seed
        self.paths: list[str] = []
        self.grids: list[np.ndarray] = []  # per image (h, w, C) float16
        self.descriptors: np.ndarray | None = None  # (N, C) float32, L2-normalised
        self.memory: np.ndarray | None = None  # (M, C) float32
        self.origin: np.ndarray | None = None  # (M,) int32: index of the source image
        self.calibration: Calibration | None = None
        from iad_agent.vision.scoring import Scoring  # scoring builds on this module

        self.scoring = Scoring()  # plain nearest neighbour until a registration learns otherwise
        self._index: faiss.Index | None = None
        self._desc_index: faiss.Index | None = None

    # ----------------------------------------------------------------- building
    def __len__(self) -> int:
        return len(self.paths)

    def add(self, grids: np.ndarray | Sequence[np.ndarray], paths: Sequence[str]) -> None:
        """Add the feature grids of new good images (incremental; the coreset is rebuilt).

        Grids may differ in shape (images of different sizes, aspect ratio kept).
        """
        grids = list(grids)
        if len(grids) != len(paths) or any(np.ndim(g) != 3 for g in grids):
            raise ValueError(f"expected {len(paths)} feature grids (h, w, C), got {[np.shape(g) for g in grids]}")
        dims = {g.shape[-1] for g in grids} | ({self.grids[0].shape[-1]} if self.grids else set())
        if len(dims) > 1:
            raise ValueError(f"feature grids have different channel counts {sorted(dims)}: extracted with another backbone?")
        self.grids.extend(np.asarray(g, dtype=np.float16) for g in grids)
        self.paths.extend(str(p) for p in paths)
        self._rebuild(len(paths))

    def _rebuild(self, n_new: int) -> None:
        """Coreset over the current memory plus the new images' patches (bounded work)."""
        n = len(self.grids)
        c = self.grids[0].shape[-1]
        # row blocks: the current memory (float32), then the new grids (float16 views, not copied)
        blocks = ([] if self.memory is None else [self.memory]) + [g.reshape(-1, c) for g in self.grids[n - n_new:]]
        new_origin = [np.full(g.shape[0] * g.shape[1], i, dtype=np.int32) for i, g in enumerate(self.grids[n - n_new:], start=n - n_new)]
        origin = np.concatenate(([] if self.origin is None else [self.origin]) + new_origin)
        if origin.shape[0] > self.max_patches:
            keep = greedy_coreset(blocks, self.max_patches, seed=self.seed)
            flat, origin = _take_rows(blocks, keep), origin[keep]
        else:
            flat = np.concatenate([b.astype(np.float32) for b in blocks])
        self.memory, self.origin = np.ascontiguousarray(flat, dtype=np.float32), origin
        self._build_indexes()

    def _build_indexes(self) -> None:
        c = self.memory.shape[1]
        self._index = faiss.IndexFlatL2(c)
        self._index.add(self.memory)
        desc = np.stack([g.astype(np.float32).mean(axis=(0, 1)) for g in self.grids])
        self.descriptors = desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-8)
        self._desc_index = faiss.IndexFlatIP(c)
        self._desc_index.add(np.ascontiguousarray(self.descriptors))

    # ---------------------------------------------------------------- querying
    def patch_distances(self, grid: np.ndarray, exclude: int | Sequence[int] | None = None) -> np.ndarray:
        """Distance of each query patch to its nearest normal patch, as an ``(h, w)`` map.

        Args:
            grid: ``(h, w, C)`` query features.
            exclude: index (or indices) of registered images whose patches must not be used
                (leave-one-out calibration).
        """
        if self._index is None:
            raise RuntimeError("the normal bank is empty: register good images first")
        h, w, c = grid.shape
        q = np.ascontiguousarray(grid.reshape(-1, c), dtype=np.float32)
        if exclude is None:
            d, _ = self._index.search(q, 1)
            return np.sqrt(np.maximum(d[:, 0], 0)).reshape(h, w)
        return np.sqrt(np.maximum(self._search_without(q, exclude), 0)).reshape(h, w)

    def _search_without(self, q: np.ndarray, exclude: int | Sequence[int]) -> np.ndarray:
        """Squared distance of each row of ``q`` to its nearest patch not from the ``exclude`` images."""
        keep = ~np.isin(self.origin, np.atleast_1d(np.asarray(exclude, dtype=np.int64)))
        if not keep.any():
            raise RuntimeError("leave-one-out needs at least two good images")
        index = faiss.IndexFlatL2(q.shape[1])
        index.add(self.memory[keep])
        d, _ = index.search(q, 1)
        return d[:, 0]

    def leave_out_distances(self, grid: np.ndarray, excludes: Sequence[int | Sequence[int]], k: int = 32) -> list[np.ndarray]:
        """:meth:`patch_distances` for several exclusion sets of one query, from one search.

        One ``k``-nearest search in the whole memory; for each set, a patch's distance is that
        of its first neighbour from an image not in the set (the same as searching the memory
        without them). Patches whose ``k`` neighbours all come from excluded images (a few, at
        ``k`` = 32, on 50 hazelnut images: none) are searched again without them.
        """
        if self._index is None:
            raise RuntimeError("the normal bank is empty: register good images first")
        h, w, c = grid.shape
        q = np.ascontiguousarray(grid.reshape(-1, c), dtype=np.float32)
        d, idx = self._index.search(q, min(k, self.memory.shape[0]))
        origin = np.where(idx >= 0, self.origin[np.maximum(idx, 0)], -1)
        rows = np.arange(len(q))
        maps = []
        for exclude in excludes:
            ok = (idx >= 0) & ~np.isin(origin, np.atleast_1d(np.asarray(exclude, dtype=np.int64)))
            found = ok.any(axis=1)
            out = d[rows, ok.argmax(axis=1)]
            if not found.all():
                out[~found] = self._search_without(q[~found], exclude)
            maps.append(np.sqrt(np.maximum(out, 0)).reshape(h, w))
        return maps

    def nearest(self, grid: np.ndarray, k: int = 1, exclude: int | None = None) -> list[tuple[int, float]]:
        """The ``k`` most similar good images by global descriptor: ``[(index, cosine), ...]``."""
        if self._desc_index is None:
            raise RuntimeError("the normal bank is empty: register good images first")
        desc = grid.astype(np.float32).mean(axis=(0, 1))
        desc = desc / max(float(np.linalg.norm(desc)), 1e-8)
        kk = min(len(self), k + (exclude is not None))
        sims, idx = self._desc_index.search(desc[None].astype(np.float32), kk)
        out = [(int(i), float(s)) for i, s in zip(idx[0], sims[0]) if i >= 0 and i != exclude]
        return out[:k]

    def aligned_score(self, grid: np.ndarray, exclude: int | None = None, radius: int = 1) -> tuple[float, np.ndarray, int]:
        """Position-wise distance to the nearest good image: ``(score, map, reference index)``."""
        ref = self.nearest(grid, 1, exclude=exclude)[0][0]
        dmap = aligned_distance(grid, self.grids[ref], radius)
        return image_score(dmap), dmap, ref

    # ------------------------------------------------------------- calibration
    def calibrate(self, fpr: float = 0.05, augmented: Callable[[], np.ndarray] | None = None, max_images: int = 32) -> Calibration:
        """Score held-out good images and store the thresholds.

        With two or more good images each (up to ``max_images``, evenly spaced) is scored
        against the others (leave-one-out). With one, ``augmented()`` must return feature grids
        of slightly shifted/rotated/re-lit views of it, scored against the bank.
        """
        if len(self) == 0:
            raise RuntimeError("cannot calibrate an empty normal bank")
        global_scores: list[float] = []
        aligned_scores: list[float] = []
        patch_values: list[np.ndarray] = []
        if len(self) >= 2:
            method = "leave-one-out"
            chosen = np.unique(np.linspace(0, len(self) - 1, min(len(self), max_images)).round().astype(int))
            for i in chosen:
                grid = self.grids[i].astype(np.float32)
                dmap = self.patch_distances(grid, exclude=int(i))
                global_scores.append(image_score(dmap))
                patch_values.append(dmap.ravel())
                aligned_scores.append(self.aligned_score(grid, exclude=int(i))[0])
        else:
            if augmented is None:
                raise RuntimeError("one good image: augmented views are needed to calibrate")
            method = "augmented-views"
            for grid in augmented():
                dmap = self.patch_distances(grid)
                global_scores.append(image_score(dmap))
                patch_values.append(dmap.ravel())
                aligned_scores.append(image_score(aligned_distance(grid, self.grids[0].astype(np.float32))))
        patch_threshold = float(np.quantile(np.concatenate(patch_values), 0.999))
        self.calibration = Calibration(fpr, method, global_scores, aligned_scores, patch_threshold, list(global_scores), patch_threshold)
        return self.calibration

    # ------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> None:
        """Write the bank to ``folder`` (atomic per file: a crash never leaves half a bank)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        import io

        buf = io.BytesIO()
        shapes = np.array([g.shape for g in self.grids], dtype=np.int64).reshape(-1, 3)
        flat = np.concatenate([g.reshape(-1) for g in self.grids]) if self.grids else np.zeros(0, np.float16)
        np.savez(buf, grid_values=flat, grid_shapes=shapes, memory=self.memory, origin=self.origin)
        atomic_write_bytes(folder / "bank.npz", buf.getvalue())
        meta = {
            "config": self.config.to_dict(),
            "max_patches": self.max_patches,
            "seed": self.seed,
            "paths": self.paths,
            "calibration": vars(self.calibration) if self.calibration else None,
            "scoring": self.scoring.to_dict(),
        }
        atomic_write_text(folder / "bank.json", json.dumps(meta, indent=1))

    @classmethod
    def load(cls, folder: str | Path) -> NormalBank:
        folder = Path(folder)
        try:
            meta = json.loads((folder / "bank.json").read_text())
            arrays = np.load(folder / "bank.npz")
        except (OSError, ValueError, KeyError) as exc:
            raise RuntimeError(f"{folder}: normal bank is missing or corrupt ({exc})") from exc
        bank = cls(FeatureConfig.from_dict(meta["config"]), meta["max_patches"], meta["seed"])
        bank.paths = list(meta["paths"])
        if "grids" in arrays:  # saved before grids could differ in shape: one (N, g, g, C) array
            bank.grids = list(arrays["grids"])
        else:
            values, offset = arrays["grid_values"], 0
            for shape in arrays["grid_shapes"]:
                size = int(np.prod(shape))
                bank.grids.append(values[offset:offset + size].reshape(tuple(int(v) for v in shape)))
                offset += size
        bank.memory = np.ascontiguousarray(arrays["memory"], dtype=np.float32)
        bank.origin = arrays["origin"]
        bank._build_indexes()
        if meta.get("calibration"):
            bank.calibration = Calibration(**meta["calibration"])
        bank.scoring = type(bank.scoring).from_dict(meta.get("scoring"))
        return bank


def upsample_map(dmap: np.ndarray, width: int, height: int, sigma: float = 4.0) -> np.ndarray:
    """Patch-distance map → pixel heat map of the image's size.

    PatchCore blurs the upsampled map with σ = 4 px at 256 px input; the blur is applied on the
    patch grid instead (σ scaled to grid cells), which is the same smoothing at a fraction of
    the cost for full-resolution images, then the map is upsampled bilinearly.
    """
    grid_sigma = sigma * dmap.shape[1] / 256
    smooth = gaussian_filter(np.asarray(dmap, dtype=np.float32), sigma=grid_sigma) if sigma > 0 else dmap
    return upsample(smooth, height, width)

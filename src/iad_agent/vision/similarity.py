"""Scoring patches without a good image: against the same image, or against the other images of a batch.

* :func:`self_similarity_map` — each patch against the other patches of its own image (a
  texture repeats, a defect does not); mixed into a product's scoring where registration finds
  it pays (:mod:`iad_agent.vision.scoring`).
* :func:`mutual_scores` — each image's patches against the other images of a batch (MuSc,
  ICLR 2024): zero-shot inspection of a folder of one product when most parts are good.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import numpy as np

SELF_K = 4  # self-similarity: distance to the 4th nearest patch of the same image ...
SELF_RADIUS = 2  # ... outside the 5x5 neighbourhood of the patch
SELF_BORDER = 2  # patches this close to the image border are not self-scored (zero-padding context)


def self_similarity_map(grid: np.ndarray, k: int = SELF_K, radius: int = SELF_RADIUS, border: int = SELF_BORDER,
                        chunk: int = 1024) -> np.ndarray:
    """Each patch's distance to its ``k``-th nearest patch of the *same* image outside its neighbourhood.

    No good image is needed: a patch of a regular texture has many look-alikes elsewhere in the
    image, a defect has few. The ``k``-th nearest (not the nearest) keeps a defect that spans
    several patches from vouching for itself; the ``radius`` neighbourhood (in patches) is left
    out because overlapping receptive fields make neighbours alike (their distances are set to
    infinity through a cached index table, :func:`_neighbourhoods`). The outer ``border`` rings
    of patches read 0: their features see the network's zero padding, so they have no
    look-alike inside the image and would otherwise dominate every image's score (on MVTec
    grid, image AUROC 0.74 with the border, 0.94 without). Rows are processed in chunks so
    memory stays at ``chunk × patches`` floats.
    """
    h, w, c = grid.shape
    x = np.ascontiguousarray(grid.reshape(-1, c), dtype=np.float32)
    sq = (x * x).sum(1)
    kk = max(1, min(k, h * w - (2 * radius + 1) ** 2))
    near = _neighbourhoods(h, w, radius)
    out = np.empty(h * w, dtype=np.float32)
    for start in range(0, h * w, chunk):
        rows = slice(start, min(start + chunk, h * w))
        d = sq[rows, None] - 2 * (x[rows] @ x.T) + sq[None]
        np.put_along_axis(d, near[rows], np.float32(np.inf), axis=1)
        out[rows] = np.partition(d, kk - 1, axis=1)[:, kk - 1]
    out = np.sqrt(np.maximum(out, 0)).reshape(h, w)
    if border and h > 2 * border and w > 2 * border:
        out[:border], out[-border:], out[:, :border], out[:, -border:] = 0, 0, 0, 0
    return out


@functools.lru_cache(maxsize=16)
def _neighbourhoods(h: int, w: int, radius: int) -> np.ndarray:
    """For each patch of an ``h × w`` grid, the flat indices of the patches within ``radius`` of it.

    ``(h·w, (2·radius + 1)²)``; near the border the coordinates are clamped into the grid, so a
    row repeats indices of its (smaller) neighbourhood instead of naming patches outside it.
    """
    yy, xx = np.divmod(np.arange(h * w), w)
    offsets = np.arange(-radius, radius + 1)
    ny = np.clip(yy[:, None, None] + offsets[None, :, None], 0, h - 1)
    nx = np.clip(xx[:, None, None] + offsets[None, None, :], 0, w - 1)
    out = (ny * w + nx).reshape(h * w, -1).astype(np.int64)
    out.flags.writeable = False  # cached: shared by every call
    return out


def mutual_pairs(n: int, max_refs: int | None = None, seed: int = 0) -> list[tuple[int, int]]:
    """The image pairs ``(i, j)``, ``i < j``, that mutual scoring compares.

    Every pair when each image has at most ``max_refs`` others; otherwise each image draws
    ``ceil(max_refs / 2)`` partners (seeded) and a pair serves both directions, so each image
    is compared with about ``max_refs`` others and time and memory grow linearly with the
    batch instead of quadratically.

    >>> mutual_pairs(3)
    [(0, 1), (0, 2), (1, 2)]
    >>> len({j for p in mutual_pairs(100, 8) for j in p if 0 in p}) >= 5
    True
    """
    if max_refs is None or n - 1 <= max_refs:
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    rng = np.random.default_rng(seed)
    half = -(-max_refs // 2)
    pairs: set[tuple[int, int]] = set()
    for i in range(n):
        others = rng.choice(n - 1, size=half, replace=False)
        for j in others + (others >= i):  # skip i itself
            pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)


def mutual_scores(grids: Sequence[np.ndarray], keep: float = 0.3, max_refs: int | None = None, seed: int = 0,
                  progress: Callable[[int, int], None] | None = None, chunk: int = 2048) -> list[np.ndarray]:
    """Zero-shot patch maps of a batch of images of one product (MuSc, ICLR 2024).

    Each patch of image ``i`` is matched to its nearest patch in every other image ``j``; the
    distances over ``j`` are sorted and the lowest ``keep`` fraction averaged. Most parts in a
    batch are good, so a normal patch finds close matches in many images while a defect finds
    none; averaging only the closest images keeps a few defective images, or a defect type
    that recurs in some of them, from vouching for each other. Needs at least two images;
    returns one ``(h, w)`` map per image (grids may differ in shape).

    Args:
        max_refs: compare each image with about this many others (see :func:`mutual_pairs`);
            ``None`` = with all of them.
        seed: the draw of those others.
        progress: called with ``(pairs done, pairs)`` as the work advances.
        chunk: query rows per distance matrix (memory: ``chunk × patches`` floats).
    """
    if len(grids) < 2:
        raise ValueError("mutual scoring needs at least two images")
    import torch

    c = grids[0].shape[-1]
    flats = [torch.from_numpy(np.ascontiguousarray(g.reshape(-1, c), dtype=np.float32)) for g in grids]
    sq = [(f * f).sum(1) for f in flats]
    pairs = mutual_pairs(len(flats), max_refs, seed)
    nearest: list[list[torch.Tensor]] = [[] for _ in flats]  # per image: its patches' distances to each partner
    # one distance buffer for every pair, filled in place: allocating a fresh chunk × patches matrix
    # (and three temporaries) per pair let glibc's heap grow with the batch — 0.7 to 10 GB for the
    # same 78 grid images, depending on how the allocations happened to fall
    longest = max(len(f) for f in flats)
    buffer = torch.empty(min(chunk, longest) * longest)
    for n_done, (i, j) in enumerate(pairs, 1):
        to_j = torch.empty(len(flats[i]))
        to_i = torch.full((len(flats[j]),), float("inf"))
        for start in range(0, len(flats[i]), chunk):
            rows = slice(start, start + chunk)
            block = flats[i][rows]
            d = buffer[:len(block) * len(flats[j])].view(len(block), len(flats[j]))
            torch.addmm(sq[j][None], block, flats[j].T, beta=1, alpha=-2, out=d)  # |b|² − 2 a·b
            d.add_(sq[i][rows, None])  # + |a|²
            to_j[rows] = d.amin(dim=1)
            torch.minimum(to_i, d.amin(dim=0), out=to_i)
        nearest[i].append(to_j.clamp_min(0).sqrt().half())
        nearest[j].append(to_i.clamp_min(0).sqrt().half())
        if progress is not None:
            progress(n_done, len(pairs))
    maps = []
    for i, dists in enumerate(nearest):
        d = torch.stack(dists, dim=1).float().sort(dim=1).values
        n = max(1, int(round(keep * d.shape[1])))
        maps.append(d[:, :n].mean(dim=1).reshape(grids[i].shape[:2]).numpy())
    return maps

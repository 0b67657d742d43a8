"""Few-shot normal bank augmentation (AnomalyDINO-style), chosen per product from good images alone.

Experiment code (issue 11 item 2), not part of the package: it was wired into registration on
branch ``augment`` (commits b9d6b95..df83797) and measured with ``iad eval``; the automatic choice
did not pay for the embedded agent (see experiments/README.md), so only this copy is kept, for
``experiments/augment.py``.

With one to a few good images the bank holds few examples of each normal patch, so a good part
seen mirrored, turned or lit a little differently finds no close neighbour. Adding the patches
of transformed copies of the references to the searchable memory (never to the stored grids,
the descriptors or the aligned comparison) gives those neighbours — when the product allows
the transformation: a mirrored transistor is a defect, a mirrored grid texture is not.

Candidate sets (:data:`AUGMENTATIONS`): ``none``; ``flips``; ``flips+rot90``; ``shifts``
(four crops offset by ~half a patch); ``jitter`` (brightness and contrast ±10–15 %).

The choice (:func:`choose_augmentation`) is the same rule for every product, from good images
and synthetic defects made from them (:mod:`iad_agent.vision.synthetic`), never a defect image:
held-out good images (leave-one-out; with one good image its augmented views,
:func:`iad_agent.vision.learn.augmented_views`) and synthetic defects made from them are scored
by plain nearest neighbour against each candidate bank; a candidate is kept when it separates
defects from good parts better than the plain bank by :data:`MARGIN` (the separation is the
synthetic AUROC, ties broken by the log-score gap, see :func:`separation`). An augmentation that
lowers good scores by making everything look normal lowers defect scores too and is not kept.

Only small banks are augmented (:data:`MAX_REFERENCES`): with many good images the views add
little and cost registration time.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import faiss
import numpy as np
from PIL import Image, ImageEnhance

from iad_agent.vision.normal_bank import TOP_FRACTION, image_score
from iad_agent.vision.synthetic import DEFECT_MAKERS

#: The candidate sets: name → the views added per reference (see :func:`view`).
AUGMENTATIONS: dict[str, tuple[str, ...]] = {
    "none": (),
    "flips": ("hflip", "vflip"),
    "flips+rot90": ("hflip", "vflip", "rot90", "rot180", "rot270"),
    "shifts": ("shift-tl", "shift-tr", "shift-bl", "shift-br"),
    "jitter": ("bright-", "bright+", "contrast-", "contrast+"),
}
#: The sets registration tries (besides ``none``); the others stay measurable (experiments/augment.py).
CANDIDATES = ("flips", "flips+rot90")
#: Banks of more good images than this are not augmented (time; the views add little there).
MAX_REFERENCES = 4
#: Synthetic defects made to judge the candidates.
N_SYNTHETIC = 12
#: How much better than the plain bank a candidate must separate synthetic defects to be kept.
MARGIN = 0.02
#: Views lying further than this from good parts towards synthetic defects are not variations of the product.
MAX_VIEW_LEVEL = 0.5
#: With the AUROC saturated: how much larger the log gap must be.
GAP_MARGIN = 0.25
#: Fraction of each query's patches (the farthest from the plain references) matched against the views.
PRUNE = 0.25
#: Fraction of the side cropped away by a ``shift`` view (≈ half a stride-8 patch at 256 px).
SHIFT = 0.016


def view(img: Image.Image, name: str) -> Image.Image:
    """One transformed copy of a good image (``hflip``, ``rot90``, ``shift-tl``, ``bright+``, ...)."""
    t = Image.Transpose
    flips = {"hflip": t.FLIP_LEFT_RIGHT, "vflip": t.FLIP_TOP_BOTTOM, "rot90": t.ROTATE_90,
             "rot180": t.ROTATE_180, "rot270": t.ROTATE_270}
    if name in flips:
        return img.transpose(flips[name])
    if name.startswith("shift-"):
        w, h = img.size
        dx, dy = max(1, round(SHIFT * w)), max(1, round(SHIFT * h))
        x0 = dx if name[-1] == "r" else 0
        y0 = dy if name[-2] == "b" else 0
        return img.crop((x0, y0, x0 + w - dx, y0 + h - dy))
    if name in ("bright-", "bright+"):
        return ImageEnhance.Brightness(img).enhance(0.9 if name.endswith("-") else 1.1)
    if name in ("contrast-", "contrast+"):
        return ImageEnhance.Contrast(img).enhance(0.85 if name.endswith("-") else 1.15)
    raise ValueError(f"unknown augmentation view {name!r}")


def views_of(names: Sequence[str]) -> list[str]:
    """The distinct views the candidate sets ``names`` need, in a fixed order."""
    return list(dict.fromkeys(v for n in names for v in AUGMENTATIONS[n]))


def extract_views(images: Sequence[Image.Image], extractor: Callable, names: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """Per reference image: ``{view: (m, C) float16 patches}`` of every view the sets ``names`` use."""
    wanted = views_of(names)
    out: list[dict[str, np.ndarray]] = []
    for img in images:
        grids = list(extractor([view(img, v) for v in wanted])) if wanted else []
        out.append({v: np.asarray(g, np.float16).reshape(-1, g.shape[-1]) for v, g in zip(wanted, grids)})
    return out


def extra_patches(views: Sequence[dict[str, np.ndarray]], name: str) -> list[np.ndarray | None]:
    """Per reference: the augmented patches of set ``name`` as one block (None for ``none``)."""
    keep = AUGMENTATIONS[name]
    return [np.concatenate([v[k] for k in keep]) if keep else None for v in views]


def separation(good: Sequence[float], defects: Sequence[float]) -> tuple[float, float]:
    """``(AUROC, log gap)`` of synthetic-defect scores over held-out good scores (higher = better).

    The log gap (mean log defect score − mean log good score, over the spread of the log good
    scores) breaks ties where the AUROC saturates at 1.

    >>> separation([1.0, 1.1], [2.0, 0.9])[0]
    0.5
    """
    g, d = np.asarray(good, np.float64), np.asarray(defects, np.float64)
    auroc = float(((d[:, None] > g[None]) + 0.5 * (d[:, None] == g[None])).mean())
    lg, ld = np.log(np.maximum(g, 1e-8)), np.log(np.maximum(d, 1e-8))
    gap = float((ld.mean() - lg.mean()) / max(float(lg.std()), 0.05))
    return auroc, gap


@dataclass
class AugmentChoice:
    """The augmentation chosen for a product and how each candidate separated synthetic defects."""

    name: str = "none"
    separation: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # AUROC, log gap, view level
    extra: list[np.ndarray | None] = field(default_factory=list)  # per reference, for NormalBank.set_extra


def _min_distances(queries: np.ndarray, block: np.ndarray) -> np.ndarray:
    index = faiss.IndexFlatL2(block.shape[1])
    index.add(np.ascontiguousarray(block, dtype=np.float32))
    d, _ = index.search(queries, 1)
    return np.sqrt(np.maximum(d[:, 0], 0))


def choose_augmentation(grids: Sequence[np.ndarray], images: Sequence[Image.Image], extractor: Callable,
                        held_views: tuple[list[Image.Image], list[np.ndarray]] | None = None,
                        candidates: Sequence[str] = CANDIDATES, n_synthetic: int = N_SYNTHETIC,
                        margin: float = MARGIN, seed: int = 0,
                        views: list[dict[str, np.ndarray]] | None = None) -> AugmentChoice:
    """Choose the bank augmentation of a product from its good images (see the module docstring).

    Args:
        grids: the references' feature grids (as the bank stores them).
        images: the references themselves.
        held_views: with one reference, its augmented views and their grids (the held-out good
            parts of :func:`iad_agent.vision.learn.learn`; made here if None).
        candidates: the sets to try (``none`` is always tried).
        views: the references' view patches (:func:`extract_views`), if already extracted.

    Returns:
        The choice, with the chosen set's augmented patches per reference.
    """
    from iad_agent.vision.learn import augmented_views

    n = len(grids)
    candidates = list(dict.fromkeys(["none", *candidates]))
    views = views if views is not None else extract_views(images, extractor, candidates)
    rng = np.random.default_rng(seed)
    makers = list(DEFECT_MAKERS.values())
    if n >= 2:
        held = [(np.asarray(g, np.float32), i) for i, g in enumerate(grids)]
        sources = [(images[j % n], j % n) for j in range(n_synthetic)]
    else:
        if held_views is None:
            imgs = augmented_views(images[0])
            held_views = (imgs, list(extractor(imgs)))
        held = [(np.asarray(g, np.float32), None) for g in held_views[1]]
        sources = [(held_views[0][j % len(held_views[0])], None) for j in range(n_synthetic)]
    defects = [makers[j % len(makers)](img, rng)[0] for j, (img, _) in enumerate(sources)]
    queries = [(np.asarray(g, np.float32), ex) for g, ex in held]
    queries += [(np.asarray(g, np.float32), ex) for g, (_, ex) in zip(extractor(defects), sources)]
    scores = candidate_scores(queries, grids, views, candidates)
    good, syn = scores["none"][:len(held)], scores["none"][len(held):]
    # how a good part looks once transformed: each view of each reference against the plain bank of the others
    level = {}
    for v in views_of(candidates):
        vq = [(views[j][v][:, None, :].astype(np.float32), j if n >= 2 else None) for j in range(n)]
        level[v] = view_level(candidate_scores(vq, grids, [{}] * n, ["none"])["none"], good, syn)
    seps: dict[str, tuple[float, float, float]] = {}
    for name in candidates:
        sep = separation(scores[name][:len(held)], scores[name][len(held):])
        worst = max((level[v] for v in AUGMENTATIONS[name]), default=0.0)
        seps[name] = (round(sep[0], 4), round(sep[1], 4), round(worst, 4))
    # with one good image there is no other good part to tell a normal variation from a defect: the
    # level is then measured against the image itself and rejected every set (grid, hazelnut: where
    # experiments/augment.py measured the largest gains), so it only counts from two good images on
    best = pick(seps, margin, max_level=MAX_VIEW_LEVEL if n >= 2 else float("inf"))
    return AugmentChoice(best, seps, extra_patches(views, best))


def view_level(view_scores: Sequence[float], good: Sequence[float], defects: Sequence[float]) -> float:
    """Where transformed good parts lie between held-out good parts (0) and synthetic defects (1), in log score.

    A mirrored transistor looks like a defect (level near or above 1): mirroring is then not a
    variation of this product's good parts, and the views would teach the bank to accept a
    misplaced part. A mirrored grid texture looks like a good part (level near 0).

    >>> round(view_level([2.0], [1.0, 1.0], [4.0, 4.0]), 2)
    0.5
    """
    lg, ld = np.log(np.maximum(good, 1e-8)).mean(), np.log(np.maximum(defects, 1e-8)).mean()
    lv = float(np.median(np.log(np.maximum(view_scores, 1e-8))))
    return float((lv - lg) / max(ld - lg, 1e-6))


def candidate_scores(queries: Sequence[tuple[np.ndarray, int | None]], grids: Sequence[np.ndarray],
                     views: Sequence[dict[str, np.ndarray]], candidates: Sequence[str]) -> dict[str, list[float]]:
    """Nearest-neighbour image score of each query against each candidate bank.

    ``queries`` are ``(grid, left-out reference or None)``. Every query patch is matched
    against the plain references; only its :data:`PRUNE` farthest patches are matched against
    the views as well (a view can only lower a distance, and the image score is the mean of the
    top 1 %), which keeps the choice to about a quarter of the full search. The score is exact
    unless a patch outside that quarter would have entered the top 1 %; otherwise it is an upper bound.
    """
    n, c = len(grids), queries[0][0].shape[-1]
    flat = np.ascontiguousarray(np.concatenate([q.reshape(-1, c) for q, _ in queries]), dtype=np.float32)
    bounds = np.cumsum([0] + [q.shape[0] * q.shape[1] for q, _ in queries])
    plain = [_min_distances(flat, np.asarray(g, np.float32).reshape(-1, c)) for g in grids]
    base, picked = [], []
    for qi, (_, ex) in enumerate(queries):
        d = np.minimum.reduce([plain[j][bounds[qi]:bounds[qi + 1]] for j in range(n) if j != ex])
        m = d.size
        top = max(4 * int(np.ceil(m * TOP_FRACTION)), int(np.ceil(m * PRUNE)))
        idx = np.argpartition(d, m - top)[m - top:] if top < m else np.arange(m)
        base.append(d)
        picked.append(idx)
    sub = np.ascontiguousarray(np.concatenate([flat[bounds[qi]:bounds[qi + 1]][idx] for qi, idx in enumerate(picked)]))
    sub_bounds = np.cumsum([0] + [len(idx) for idx in picked])
    wanted = views_of(candidates)
    by_view = [{v: _min_distances(sub, vs[v]) for v in wanted} for vs in views]
    out: dict[str, list[float]] = {}
    for name in candidates:
        out[name] = []
        for qi, (_, ex) in enumerate(queries):
            d = base[qi].copy()
            near = [by_view[j][v][sub_bounds[qi]:sub_bounds[qi + 1]] for j in range(n) if j != ex for v in AUGMENTATIONS[name]]
            if near:
                d[picked[qi]] = np.minimum(d[picked[qi]], np.minimum.reduce(near))
            out[name].append(image_score(d))
    return out


def pick(seps: dict[str, Sequence[float]], margin: float = MARGIN, gap_margin: float = GAP_MARGIN,
         max_level: float = MAX_VIEW_LEVEL) -> str:
    """The candidate kept: the best-separating one among those that beat ``none`` by the margins.

    ``seps[name]`` is ``(synthetic AUROC, log gap, view level)``. A candidate is admissible when
    its views look like good parts (view level ≤ ``max_level``, :func:`view_level`); it beats
    ``none`` when its synthetic AUROC is higher by ``margin``, or (AUROC saturated) not lower and
    its log gap higher by ``gap_margin``.

    >>> pick({"none": (0.9, 2.0, 0), "flips": (0.95, 2.1, 0.1), "jitter": (0.91, 3.0, 0.1), "flips+rot90": (1, 3, 0.9)})
    'flips'
    """
    base = seps["none"]
    ok = [n for n, s in seps.items() if n != "none" and (len(s) < 3 or s[2] <= max_level)
          and (s[0] >= base[0] + margin or (s[0] >= base[0] and s[1] >= base[1] + gap_margin))]
    return max(ok, key=lambda n: tuple(seps[n][:2])) if ok else "none"


def fit_budget(extra: list[np.ndarray | None], n_plain: int, max_patches: int, seed: int = 0) -> list[np.ndarray | None]:
    """The augmented patches thinned (an even, seeded draw per image) so the memory stays within ``max_patches``.

    The registered images' own patches come first; the views share what is left. Thinning
    instead of the bank's coreset keeps registration fast (a 16,384-point greedy coreset costs
    seconds) and the views' patches are largely redundant with each other.

    >>> [len(e) for e in fit_budget([np.zeros((100, 2)), np.zeros((100, 2))], 50, 150)]
    [50, 50]
    """
    total = sum(len(e) for e in extra if e is not None)
    room = max_patches - n_plain
    if total <= room:
        return extra
    rng = np.random.default_rng(seed)
    out: list[np.ndarray | None] = []
    for e in extra:
        if e is None or room <= 0:
            out.append(None)
            continue
        keep = int(len(e) * room / total)
        out.append(e[np.sort(rng.choice(len(e), keep, replace=False))] if keep else None)
    return out

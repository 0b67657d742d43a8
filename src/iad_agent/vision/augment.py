"""Few-shot normal bank augmentation (AnomalyDINO-style), chosen per product from good images alone.

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

from iad_agent.vision.normal_bank import image_score
from iad_agent.vision.synthetic import DEFECT_MAKERS

#: The candidate sets: name → the views added per reference (see :func:`view`).
AUGMENTATIONS: dict[str, tuple[str, ...]] = {
    "none": (),
    "flips": ("hflip", "vflip"),
    "flips+rot90": ("hflip", "vflip", "rot90", "rot180", "rot270"),
    "shifts": ("shift-tl", "shift-tr", "shift-bl", "shift-br"),
    "jitter": ("bright-", "bright+", "contrast-", "contrast+"),
}
#: Banks of more good images than this are not augmented (time; the views add little there).
MAX_REFERENCES = 4
#: Synthetic defects made to judge the candidates.
N_SYNTHETIC = 12
#: How much better than the plain bank a candidate must separate synthetic defects to be kept.
MARGIN = 0.02
#: With the AUROC saturated: how much larger the log gap must be.
GAP_MARGIN = 0.25
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
    separation: dict[str, tuple[float, float]] = field(default_factory=dict)
    extra: list[np.ndarray | None] = field(default_factory=list)  # per reference, for NormalBank.set_extra


def _min_distances(queries: np.ndarray, block: np.ndarray) -> np.ndarray:
    index = faiss.IndexFlatL2(block.shape[1])
    index.add(np.ascontiguousarray(block, dtype=np.float32))
    d, _ = index.search(queries, 1)
    return np.sqrt(np.maximum(d[:, 0], 0))


def choose_augmentation(grids: Sequence[np.ndarray], images: Sequence[Image.Image], extractor: Callable,
                        held_views: tuple[list[Image.Image], list[np.ndarray]] | None = None,
                        candidates: Sequence[str] = tuple(AUGMENTATIONS), n_synthetic: int = N_SYNTHETIC,
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
    c = queries[0][0].shape[-1]
    flat = np.ascontiguousarray(np.concatenate([q.reshape(-1, c) for q, _ in queries]), dtype=np.float32)
    bounds = np.cumsum([0] + [q.shape[0] * q.shape[1] for q, _ in queries])
    # nearest distance of every query patch to every (reference, view) block; a bank's is the min over its blocks
    plain = [_min_distances(flat, np.asarray(g, np.float32).reshape(-1, c)) for g in grids]
    by_view = [{v: _min_distances(flat, p) for v, p in vs.items()} for vs in views]
    seps: dict[str, tuple[float, float]] = {}
    for name in candidates:
        per_ref = [np.minimum.reduce([plain[j], *(by_view[j][v] for v in AUGMENTATIONS[name])]) for j in range(n)]
        scores = []
        for qi, (_, ex) in enumerate(queries):
            refs = [j for j in range(n) if j != ex]
            d = np.minimum.reduce([per_ref[j][bounds[qi]:bounds[qi + 1]] for j in refs])
            scores.append(image_score(d))
        sep = separation(scores[:len(held)], scores[len(held):])
        seps[name] = (round(sep[0], 4), round(sep[1], 4))
    best = pick(seps, margin)
    return AugmentChoice(best, seps, extra_patches(views, best))


def pick(seps: dict[str, tuple[float, float]], margin: float = MARGIN, gap_margin: float = GAP_MARGIN) -> str:
    """The candidate kept: the best-separating one among those that beat ``none`` by the margins.

    A candidate beats ``none`` when its synthetic AUROC is higher by ``margin``, or (AUROC
    saturated) not lower and its log gap higher by ``gap_margin``.

    >>> pick({"none": (0.9, 2.0), "flips": (0.95, 2.1), "jitter": (0.91, 3.0)})
    'flips'
    """
    base = seps["none"]
    ok = [n for n, s in seps.items() if n != "none" and (s[0] >= base[0] + margin or (s[0] >= base[0] and s[1] >= base[1] + gap_margin))]
    return max(ok, key=lambda n: seps[n]) if ok else "none"


def augment_bank(bank, extractor: Callable, image_of: Callable[[int], Image.Image],  # noqa: ANN001 - NormalBank
                 held_views: tuple[list[Image.Image], list[np.ndarray]] | None = None, enabled: bool = True,
                 max_references: int = MAX_REFERENCES) -> AugmentChoice | None:
    """Choose and apply the augmentation of a bank of good images, in place (registration's step).

    A bank of more than ``max_references`` good images, or with ``enabled`` False, holds no
    augmented patches (``enabled`` False is stored as ``"off"``, so a later re-registration
    keeps it off). Returns the choice, or None where no choice was made.
    """
    n = len(bank)
    if not enabled or n > max_references:
        name = "off" if not enabled else "none"
        if bank.augmentation in ("none", "off"):  # no augmented patches held: nothing to rebuild
            bank.augmentation = name
        else:
            bank.set_extra([None] * n, name)
        return None
    choice = choose_augmentation(bank.grids, [image_of(i) for i in range(n)], extractor, held_views)
    bank.set_extra(choice.extra, choice.name, choice.separation)
    return choice

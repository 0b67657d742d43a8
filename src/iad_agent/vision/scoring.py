"""How a product scores a patch: nearest good patch, self-similarity, or a learned mix of both.

The global look's patch map is

    f = (1 − w) · knn / knn_level + w · self / self_level

where ``knn`` is the distance to the nearest good patch (PatchCore, AnomalyDINO), ``self`` the
distance to the k-th nearest patch of the same image outside the patch's neighbourhood (no
good image needed; strong on regular textures, useless on objects whose parts are unique), and
the levels are their median image scores on held-out good images, so both terms are in units of
"a typical good part". The weight ``w`` is chosen per product at registration, from good
images only: synthetic defects made from the references (:mod:`iad_agent.vision.synthetic`)
must separate from held-out good images (leave-one-out, or augmented views of a single good
image); the candidate with the best separation wins, ties going to the smaller weight (registration
never goes below ¼, :data:`iad_agent.vision.learn.MIN_SELF_WEIGHT`) — except with a single good image,
where exact ties go to the larger weight: the held-out "good images" are then augmented views of
the reference itself, which flatter the nearest-neighbour term (other good parts score 1.0–1.8×
higher than the views under it, measured on the shared data's good images), while the
self-similarity term never looks at the reference and is judged honestly.

With a single good image ``knn`` is first averaged over each patch's 3×3 neighbourhood
(``knn_smooth``, set by :func:`iad_agent.vision.learn.learn`): one image leaves many normal
patches without a close match, and the mean keeps those isolated mismatches from deciding the
score while a defect, which spans neighbouring patches, keeps its height.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from iad_agent.vision.normal_bank import image_score

#: Self-similarity weights tried at registration.
WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)
#: A candidate must beat the best smaller weight's synthetic AUROC by this much to be chosen.
MARGIN = 0.02


@dataclass
class Scoring:
    """The product's patch scoring, learned at registration and saved with the bank.

    Attributes:
        self_weight: ``w`` above (0 = plain nearest neighbour).
        knn_level / self_level: median image score of held-out good images per term.
        synthetic_auroc: the separation of synthetic defects from held-out good images for each
            candidate weight (``{"0.5": 0.93, ...}``), for the record.
        self_raw: the self-similarity term reads the *unsmoothed* patch grid
            (:meth:`~iad_agent.vision.features.FeatureExtractor.with_raw`); False for products
            stored before (their levels were measured on the smoothed grid, which they keep).
        knn_smooth: the nearest-neighbour map is averaged over this many patches square before the
            mix (3 with a single good image, else 1; 1 for products stored before).
    """

    self_weight: float = 0.0
    knn_level: float = 1.0
    self_level: float = 1.0
    synthetic_auroc: dict[str, float] = field(default_factory=dict)
    self_raw: bool = False
    knn_smooth: int = 1

    def knn_term(self, knn_map: np.ndarray) -> np.ndarray:
        """The nearest-neighbour map as the mix reads it: averaged over ``knn_smooth`` × ``knn_smooth`` patches."""
        knn_map = np.asarray(knn_map, np.float32)
        if self.knn_smooth <= 1 or knn_map.ndim != 2:
            return knn_map
        from iad_agent.vision.grid_ops import avg_pool

        return avg_pool(knn_map[None, :, :, None], self.knn_smooth)[0, :, :, 0]

    @property
    def uses_self(self) -> bool:
        return self.self_weight > 0

    def fuse(self, knn_map: np.ndarray, self_map: np.ndarray | None) -> np.ndarray:
        """The fused patch map (in units of a typical good part's score)."""
        out = (1 - self.self_weight) * self.knn_term(knn_map) / max(self.knn_level, 1e-8)
        if self.uses_self:
            if self_map is None:
                raise ValueError("this product's scoring needs the self-similarity map")
            out = out + self.self_weight * np.asarray(self_map, np.float32) / max(self.self_level, 1e-8)
        return out

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> Scoring:
        return cls(**d) if d else cls()


def _auroc(negatives: Sequence[float], positives: Sequence[float]) -> float:
    """Probability that a positive outscores a negative (ties count half).

    >>> _auroc([1, 2], [3, 2])
    0.875
    """
    neg, pos = np.asarray(negatives, float), np.asarray(positives, float)
    greater = (pos[:, None] > neg[None]).sum() + 0.5 * (pos[:, None] == neg[None]).sum()
    return float(greater / max(1, neg.size * pos.size))


def choose_scoring(held_knn: Sequence[np.ndarray], held_self: Sequence[np.ndarray],
                   syn_knn: Sequence[np.ndarray], syn_self: Sequence[np.ndarray],
                   weights: Sequence[float] = WEIGHTS, ties_to_larger: bool = False, knn_smooth: int = 1) -> Scoring:
    """Pick the self-similarity weight that best separates synthetic defects from held-out good images.

    Args:
        held_knn / held_self: patch maps of held-out good images (nearest-neighbour / self).
        syn_knn / syn_self: the same for synthetic defects made from good images.
        ties_to_larger: among weights with exactly the best separation take the largest (used
            when the held-out images are augmented views of one good image, see above);
            otherwise a larger weight must beat the best smaller one by ``MARGIN``.
        knn_smooth: the nearest-neighbour maps are read averaged over this many patches square
            (:attr:`Scoring.knn_smooth`); the maps passed in are the plain ones.
    """
    term = Scoring(knn_smooth=knn_smooth).knn_term
    knn_level = float(np.median([image_score(term(m)) for m in held_knn]))
    self_level = float(np.median([image_score(m) for m in held_self])) if held_self else 1.0
    aurocs: dict[str, float] = {}
    best_w, best = 0.0, -1.0
    for w in weights:
        s = Scoring(w, knn_level, self_level, knn_smooth=knn_smooth)
        neg = [image_score(s.fuse(k, m)) for k, m in zip(held_knn, held_self or [None] * len(held_knn))]
        pos = [image_score(s.fuse(k, m)) for k, m in zip(syn_knn, syn_self or [None] * len(syn_knn))]
        aurocs[str(w)] = round(_auroc(neg, pos), 4)
        if aurocs[str(w)] > best + (MARGIN if w > 0 and not ties_to_larger else 0) or (
                ties_to_larger and aurocs[str(w)] == best):
            best_w, best = w, aurocs[str(w)]
    return Scoring(best_w, knn_level, self_level, aurocs, knn_smooth=knn_smooth)

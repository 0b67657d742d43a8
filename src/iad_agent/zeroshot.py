"""Zero-shot inspection of a batch: images of one product, no good image registered.

Each image's patches are scored against the *other images of the batch* (mutual scoring as in
MuSc, ICLR 2024, :func:`iad_agent.vision.similarity.mutual_scores`): most parts in a batch are
good, so a normal patch finds close look-alikes in many other images, a defect in few. The
patch map is

    f = (1 − w) · mutual / mutual_level + w · self / self_level

with ``self`` the self-similarity map (:func:`~iad_agent.vision.similarity.self_similarity_map`)
and the levels the batch's median image scores, so both terms are in units of "a typical image
of this batch" — no label is used anywhere. The image score is the mean of the top 1 % of the
map (as for registered products), and the threshold is a robust outlier rule on the batch's
own image scores: ``median + k · 1.4826 · MAD``.

``w`` and ``k`` were chosen once, by measurement across all dev categories (``iad eval
--shots 0``), never per category; see :data:`SELF_WEIGHT` and :data:`K_MAD`.

Brightness: when the luminance means of the batch's images vary (the rule of registration,
:data:`iad_agent.vision.brightness.VARIATION`, applied to the whole unlabelled batch), every
image is moved to the batch's median luminance mean and standard deviation before its features
are extracted (:func:`feature_config_for`), so a part shot darker or lighter than the rest does
not stand out for its light alone. ``match_brightness=False`` (``--keep-brightness``) leaves
images as they are.

Patch lengths: as a registered product caps its patch vectors' length
(:data:`iad_agent.vision.features.CLIP_QUANTILE`), the batch caps every patch vector at that
quantile of its own patch lengths (all its images: most parts of a batch are good), direction
kept, before both maps (``ZeroShotSettings.clip_quantile``; 0 leaves them as they are, the
``zero-shot-no-clip`` policy of ``iad eval``).

Time and memory: features are extracted once per image; each image is compared with at most
``max_refs`` others (a seeded draw, with a warning, for bigger batches), so the work grows
linearly with the batch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from iad_agent.vision.features import CLIP_QUANTILE, clip_length_of, clip_lengths  # the batch caps as a product does

log = logging.getLogger(__name__)

#: Self-similarity's weight in the zero-shot map, chosen across all dev categories (see the README).
SELF_WEIGHT = 0.5
#: The threshold is the batch's median image score + K_MAD robust standard deviations (1.4826 · MAD).
K_MAD = 1.0
#: The threshold's statistics come from this share of the batch: the images with the lowest scores.
LOW_SHARE = 0.5
#: Fewest images a batch must have (each image needs at least two others to be compared with).
MIN_IMAGES = 3
#: Each image is compared with at most this many others of the batch.
MAX_REFS = 48

#: ``iad eval --shots 0`` policies and their self weight (None: :data:`SELF_WEIGHT`): the chosen
#: combination, each component alone, and the chosen combination without the length cap.
ZERO_SHOT_POLICIES = {"zero-shot": None, "zero-shot-mutual": 0.0, "zero-shot-self": 1.0, "zero-shot-no-clip": None}
#: The policies whose batch is not capped (``clip_quantile`` 0).
UNCAPPED_POLICIES = frozenset({"zero-shot-no-clip"})


class ZeroShotError(ValueError):
    """A batch that cannot be inspected zero-shot (too few images)."""


@dataclass(frozen=True)
class ZeroShotSettings:
    """How a batch is scored (see the module docstring).

    Attributes:
        self_weight: ``w``, the self-similarity's share of the patch map.
        keep: the fraction of the other images (the closest ones) a patch's distances are averaged over.
        k_mad: the threshold's number of robust standard deviations above the median score.
        max_refs: each image is compared with at most this many others.
        seed: the draw of those others.
        clip_quantile: the batch's patch vectors are capped at this quantile of its patch
            lengths before both maps; 0: not capped.
    """

    self_weight: float = SELF_WEIGHT
    keep: float = 0.3
    k_mad: float = K_MAD
    max_refs: int = MAX_REFS
    seed: int = 0
    clip_quantile: float = CLIP_QUANTILE

    def __post_init__(self) -> None:
        if not 0.0 <= self.clip_quantile <= 1.0:
            raise ValueError(f"clip_quantile must be between 0 and 1, got {self.clip_quantile}")


def policy_settings(label: str) -> ZeroShotSettings:
    """The settings a zero-shot policy of ``iad eval`` scores with (:data:`ZERO_SHOT_POLICIES`)."""
    import dataclasses

    weight = ZERO_SHOT_POLICIES[label]
    settings = ZeroShotSettings() if weight is None else dataclasses.replace(ZeroShotSettings(), self_weight=weight)
    return dataclasses.replace(settings, clip_quantile=0.0) if label in UNCAPPED_POLICIES else settings


def label_free_threshold(scores: Sequence[float], k: float = K_MAD, low_share: float = LOW_SHARE) -> float:
    """``median + k · 1.4826 · MAD`` of the lowest ``low_share`` of a batch's image scores.

    The statistics come from the part of the batch that looks most normal, so the rule still
    holds when many images of the batch are defective (the dev test sets are 75–100 %
    defective, and a median over the whole batch then lies among the defects). The MAD is
    floored at 1 % of the median.

    >>> round(label_free_threshold([1.0, 1.1, 0.9, 1.2, 5.0, 6.0], 2.0), 4)  # from 0.9, 1.0, 1.1
    1.2965
    """
    s = np.sort(np.asarray(scores, dtype=np.float64))
    low = s[:max(2, int(math.ceil(low_share * s.size)))]
    med = float(np.median(low))
    mad = float(np.median(np.abs(low - med)))
    return med + k * 1.4826 * max(mad, 0.01 * abs(med))


def fuse_maps(mutual: Sequence[np.ndarray], self_maps: Sequence[np.ndarray] | None, weight: float) -> list[np.ndarray]:
    """``(1 − w) · mutual / level + w · self / level``, each level the batch's median image score."""
    from iad_agent.vision.normal_bank import image_score

    def unit(maps: Sequence[np.ndarray]) -> list[np.ndarray]:
        level = float(np.median([image_score(m) for m in maps]))
        return [np.asarray(m, np.float32) / max(level, 1e-8) for m in maps]

    out = [(1 - weight) * m for m in unit(mutual)] if weight < 1 else [0.0 * np.asarray(m, np.float32) for m in mutual]
    if weight > 0:
        if self_maps is None:
            raise ValueError("this zero-shot scoring needs the self-similarity maps")
        out = [o + weight * s for o, s in zip(out, unit(self_maps))]
    return out


@dataclass
class BatchMaps:
    """The patch maps of a batch: mutual and self-similarity, before fusion."""

    mutual: list[np.ndarray]
    self_maps: list[np.ndarray] | None

    def scored(self, weight: float, k_mad: float = K_MAD) -> tuple[list[np.ndarray], list[float], float]:
        """``(fused maps, image scores, threshold)`` for a self-similarity weight."""
        from iad_agent.vision.normal_bank import image_score

        maps = fuse_maps(self.mutual, self.self_maps, weight)
        scores = [image_score(m) for m in maps]
        return maps, scores, label_free_threshold(scores, k_mad)


def batch_maps(grids: Sequence[np.ndarray], settings: ZeroShotSettings = ZeroShotSettings(), need_self: bool = True,
               progress: Callable[[int, int], None] | None = None) -> BatchMaps:
    """Mutual (and self-similarity) patch maps of a batch's feature grids.

    Raises:
        ZeroShotError: fewer than :data:`MIN_IMAGES` grids.
    """
    from iad_agent.vision.similarity import mutual_scores, self_similarity_map

    if len(grids) < MIN_IMAGES:
        raise ZeroShotError(f"zero-shot inspection needs at least {MIN_IMAGES} images of the product, got {len(grids)}")
    if settings.clip_quantile:
        length = clip_length_of(grids, settings.clip_quantile, max_grids=len(grids))
        grids = [clip_lengths(g, length) for g in grids]
    if len(grids) - 1 > settings.max_refs:
        log.warning("%d images: each is compared with about %d others of the batch (drawn with seed %d), "
                    "to keep time and memory bounded", len(grids), settings.max_refs, settings.seed)
    mutual = mutual_scores(grids, settings.keep, settings.max_refs, settings.seed, progress)
    self_maps = [self_similarity_map(g) for g in grids] if need_self else None
    return BatchMaps(mutual, self_maps)


def feature_config_for(sizes: Sequence[tuple[int, int]], base=None,  # noqa: ANN001, ANN201 - FeatureConfig
                       luminance: Sequence[tuple[float, float]] | None = None):
    """The feature configuration of a batch, as registration chooses it from good images.

    One scale for all when image sizes differ; with ``luminance`` (each image's
    :func:`~iad_agent.vision.brightness.luminance_stats`), the batch's median brightness when its
    light varies (:func:`~iad_agent.vision.brightness.target_from_stats`; a ``base`` that sets
    ``brightness`` keeps it). ``luminance=None``: images are left at their own brightness.
    """
    import dataclasses

    from iad_agent.vision.brightness import target_from_stats
    from iad_agent.vision.features import FeatureConfig

    config = base or FeatureConfig()
    if config.keep_aspect and not config.reference_side and len(set(sizes)) > 1:
        config = dataclasses.replace(config, reference_side=int(np.median([min(s) for s in sizes])))
    if luminance is not None and config.brightness is None:
        target = target_from_stats(luminance)
        if target is not None:
            config = dataclasses.replace(config, brightness=target)
    return config


@dataclass
class ZeroShotResult:
    """One image's zero-shot answer; :meth:`to_dict` is an ``iad inspect --json`` object."""

    image: str
    product: str
    patch_map: np.ndarray
    size: tuple[int, int]  # (width, height)
    score: float
    threshold: float
    elapsed_ms: float
    batch_size: int
    warnings: list[str] = field(default_factory=list)
    heatmap_path: Path | None = None
    policy: str = "zero-shot"
    brightness: tuple[float, float] | None = None  # the luminance (mean, std) the batch was matched to, if any

    @property
    def anomaly_present(self) -> bool:
        return self.score > self.threshold

    @property
    def box(self):  # noqa: ANN201 - Box | None
        from iad_agent.episode import BOX_SIGMA, hot_spot_box

        return hot_spot_box(self.patch_map, self.threshold, sigma=BOX_SIGMA) if self.anomaly_present else None

    @property
    def heatmap(self) -> np.ndarray:
        """Pixel heat map of the image's size (patch-score units; the threshold is the image score's)."""
        from iad_agent.vision.normal_bank import upsample_map

        return upsample_map(self.patch_map, *self.size)

    def save_heatmap(self, path: str | Path) -> None:
        """8-bit grayscale PNG: 128 = the threshold, 255 = twice it (as ``iad inspect``)."""
        from PIL import Image

        from iad_agent.imageio import save_png

        scaled = np.clip(self.heatmap / (2 * self.threshold) * 255, 0, 255).astype(np.uint8)
        save_png(Image.fromarray(scaled, mode="L"), path)
        self.heatmap_path = Path(path)

    def to_dict(self) -> dict[str, Any]:
        from iad_agent.inspector import tidy_numbers

        ratio = self.score / self.threshold
        verdict = "anomalous" if self.anomaly_present else "normal"
        box = self.box
        d = {
            "image": self.image, "product": self.product, "policy": self.policy,
            "anomaly_present": self.anomaly_present, "score": round(self.score, 6), "threshold": round(self.threshold, 6),
            "box": box.to_list() if box else None, "defect_type": None, "defect_source": None, "defect_candidates": [],
            "confidence": round(0.5 + 0.5 * math.tanh(2.0 * abs(math.log(max(ratio, 1e-6)))), 4),
            "reason": (f"zero-shot: its patches differ from the closest of the {self.batch_size - 1} other images of the "
                       f"batch {ratio:.2f}× as much as the batch's outlier limit (from its more normal-looking half) "
                       f"allows: {verdict}"),
            "tool_calls": [], "heatmap": str(self.heatmap_path) if self.heatmap_path else None,
            "elapsed_ms": round(self.elapsed_ms, 1), "stop_reason": "answer", "warnings": self.warnings,
            "trace": {"mode": "zero-shot", "batch_size": self.batch_size},
        }
        if self.brightness is not None:
            d["trace"]["brightness"] = list(self.brightness)
        out = tidy_numbers(d)
        out["score"], out["threshold"] = d["score"], d["threshold"]
        return out


def score_batch(maps: BatchMaps, paths: Sequence[str | Path], sizes: Sequence[tuple[int, int]], product: str,
                settings: ZeroShotSettings = ZeroShotSettings(), policy: str = "zero-shot",
                elapsed_ms: float = 0.0, brightness: tuple[float, float] | None = None) -> list[ZeroShotResult]:
    """The answers of a batch whose maps are computed: fused maps, image scores, the batch's threshold.

    Args:
        sizes: each image's ``(width, height)`` (for its heat map).
        elapsed_ms: the batch's wall time so far, shared out equally between its images.
        brightness: the luminance ``(mean, std)`` the batch's images were matched to (reported), or None.
    """
    start = time.perf_counter()
    fused, scores, threshold = maps.scored(settings.self_weight, settings.k_mad)
    per_image = (elapsed_ms + (time.perf_counter() - start) * 1000) / len(paths)
    warnings = []
    if len(paths) - 1 > settings.max_refs:
        warnings.append(f"compared with about {settings.max_refs} of the {len(paths) - 1} other images of the batch")
    return [ZeroShotResult(str(p), product, m, tuple(size), s, threshold, per_image, len(paths), list(warnings),
                           policy=policy, brightness=brightness) for p, size, m, s in zip(paths, sizes, fused, scores)]


@dataclass
class ZeroShotOutcome:
    """One image of a batch: its result, or why it could not be inspected."""

    image: str
    result: ZeroShotResult | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.result is not None


def inspect_paths(paths: Sequence[str | Path], product: str, settings: ZeroShotSettings = ZeroShotSettings(),
                  progress: Callable[[str, int, int], None] | None = None, features=None,  # noqa: ANN001 - FeatureConfig
                  match_brightness: bool = True) -> list[ZeroShotOutcome]:
    """Inspect the images of one product zero-shot, one outcome per path (in order).

    Images are read twice (once for their sizes and luminance statistics, which fix one scale and
    the brightness of the batch, once for their features), so no more than one decoded image is in
    memory at a time. An unreadable image gets an error outcome and is left out of the batch.

    Args:
        progress: called with ``(phase, done, total)``: ``"light"`` (the first pass, with
            ``match_brightness``), ``"features"``, then ``"scoring"``.
        features: a :class:`~iad_agent.vision.features.FeatureConfig` (default: the packaged one).
        match_brightness: when the batch's light varies, see every image at the batch's median
            brightness and contrast (see the module docstring); ``False``: leave images as they
            are (and read only their headers in the first pass).

    Raises:
        ZeroShotError: fewer than :data:`MIN_IMAGES` readable images.
    """
    from iad_agent.imageio import ImageError, load_image
    from iad_agent.vision.brightness import luminance_stats
    from iad_agent.vision.features import FeatureExtractor

    start = time.perf_counter()
    outcomes = [ZeroShotOutcome(str(p)) for p in paths]
    sizes: dict[int, tuple[int, int]] = {}
    stats: list[tuple[float, float]] = []
    for i, p in enumerate(paths):
        try:
            if match_brightness:
                img = load_image(p)  # decoded for its luminance; only the statistics are kept
                sizes[i] = img.size
                stats.append(luminance_stats(img))
                del img
            else:
                sizes[i] = _image_size(p)
        except (ImageError, OSError) as exc:
            outcomes[i].error = str(exc)
        if progress and match_brightness:
            progress("light", i + 1, len(paths))
    if len(sizes) < MIN_IMAGES:
        raise ZeroShotError(f"zero-shot inspection needs at least {MIN_IMAGES} readable images of the product, "
                            f"got {len(sizes)}")
    config = feature_config_for(list(sizes.values()), features, stats if match_brightness else None)
    extractor = FeatureExtractor(config)
    grids: dict[int, np.ndarray] = {}
    for n, i in enumerate(list(sizes), 1):
        try:
            img = load_image(paths[i])
            sizes[i] = img.size
            grids[i] = extractor.extract_batch([img])[0]
        except (ImageError, OSError) as exc:
            outcomes[i].error = str(exc)
        if progress:
            progress("features", n, len(sizes))
    keys = list(grids)
    maps = batch_maps([grids.pop(i) for i in keys], settings, need_self=settings.self_weight > 0,
                      progress=(lambda d, t: progress("scoring", d, t)) if progress else None)
    results = score_batch(maps, [str(paths[i]) for i in keys], [sizes[i] for i in keys], product, settings,
                          elapsed_ms=(time.perf_counter() - start) * 1000, brightness=config.brightness)
    for i, result in zip(keys, results):
        outcomes[i].result = result
    return outcomes


def _image_size(path: str | Path) -> tuple[int, int]:
    """The size :func:`iad_agent.imageio.load_image` will give, from the header alone."""
    from PIL import Image, UnidentifiedImageError

    from iad_agent.imageio import DEFAULT_MAX_SIDE, ImageError, downscaled_size

    try:
        with Image.open(path) as img:
            size = img.size
    except (UnidentifiedImageError, ValueError) as exc:
        raise ImageError(f"{path}: not an image ({exc})") from exc
    return downscaled_size(size, DEFAULT_MAX_SIDE) if max(size) > DEFAULT_MAX_SIDE else size

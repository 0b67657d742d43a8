"""Pure, vectorised metrics for industrial anomaly detection.

Conventions used throughout:

* Labels are ``0`` (normal) / ``1`` (anomalous); booleans are accepted.
* A score-based decision predicts *anomalous* when ``score > threshold`` (strictly).
* Explicit predictions may contain ``None``, the "no answer" of an episode that ran out of
  steps. It always counts as wrong: a false alarm on a normal image, a miss on an anomalous one.
* A metric that is undefined for the given data (a single class, no ground-truth regions, ...)
  returns ``None`` instead of raising, so benchmark tables can show "n/a".
* Connected components (AUPRO regions, the largest defect for the hit rule) use
  **8-connectivity** (``scipy.ndimage.label`` with a 3x3 structure of ones), as the MVTec AD
  reference code and anomalib (kornia / ``cv2.connectedComponents(connectivity=8)``) do.

Nothing here reads files or keeps state; every function takes plain lists / arrays.

Longer than our usual ~400 lines on purpose: it is a flat list of small pure functions, one
per metric, each with the doctest that pins its definition; splitting them up would only
scatter one reference table over several files.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

from iad_agent.types import Box

__all__ = [
    "aupro",
    "balanced_accuracy_at_threshold",
    "binary_metrics",
    "box_hit",
    "box_iou",
    "defect_type_accuracy",
    "f1_at_threshold",
    "image_ap",
    "image_auroc",
    "latency_percentiles",
    "mean_std",
    "oracle_f1",
    "pixel_auroc",
    "pro_curve",
]

_EIGHT_CONNECTED = np.ones((3, 3), dtype=int)
_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1).astype(int)


# --------------------------------------------------------------------------- image level


def _labels(labels: Sequence[Any]) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {arr.shape}")
    if arr.size and not np.isin(arr, (0, 1)).all():
        raise ValueError("labels must be 0 (normal) or 1 (anomalous)")
    return arr.astype(np.int8)


def _scores(scores: Sequence[Any], n: int) -> np.ndarray:
    arr = np.asarray(scores, dtype=np.float64)
    if arr.shape != (n,):
        raise ValueError(f"expected {n} scores, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("scores must be finite numbers")
    return arr


def _both_classes(y: np.ndarray) -> bool:
    return bool(y.size) and 0 < int(y.sum()) < y.size


def image_auroc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Image-level area under the ROC curve (scikit-learn's ``roc_auc_score``).

    Args:
        labels: 0 (normal) / 1 (anomalous) per image.
        scores: anomaly score per image (higher = more anomalous).

    Returns:
        The AUROC, or ``None`` when only one class is present.

    >>> image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    >>> image_auroc([1, 1], [0.2, 0.3]) is None
    True
    """
    y = _labels(labels)
    s = _scores(scores, y.size)
    if not _both_classes(y):
        return None
    return float(roc_auc_score(y, s))


def image_ap(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Image-level average precision (scikit-learn's ``average_precision_score``).

    Returns:
        The AP with anomalous as the positive class, or ``None`` when only one class is present.

    >>> round(image_ap([0, 1, 0, 1], [0.1, 0.4, 0.35, 0.8]), 4)
    1.0
    >>> round(image_ap([1, 0, 1], [0.9, 0.8, 0.1]), 4)
    0.8333
    """
    y = _labels(labels)
    s = _scores(scores, y.size)
    if not _both_classes(y):
        return None
    return float(average_precision_score(y, s))


def _predictions(predictions: Sequence[Any], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(pred as bool array, answered mask) from a sequence of bool/0/1/None."""
    preds = list(predictions)
    if len(preds) != n:
        raise ValueError(f"expected {n} predictions, got {len(preds)}")
    answered = np.array([p is not None for p in preds], dtype=bool)
    values = np.array([bool(p) if p is not None else False for p in preds], dtype=bool)
    return values, answered


def binary_metrics(labels: Sequence[int], predictions: Sequence[bool | int | None]) -> dict[str, Any]:
    """Confusion-matrix metrics of explicit anomalous/normal decisions.

    A ``None`` prediction ("no answer") is always wrong: on a normal image it counts as a
    false positive (false alarm), on an anomalous image as a false negative (miss).

    Args:
        labels: 0 (normal) / 1 (anomalous) per image.
        predictions: ``True``/``1`` anomalous, ``False``/``0`` normal, ``None`` no answer.

    Returns:
        ``f1``, ``balanced_accuracy``, ``precision``, ``recall``, ``accuracy``, ``tpr``
        (= recall), ``tnr``, plus the counts ``tp``, ``fp``, ``tn``, ``fn``, ``n`` and
        ``no_answer``. A rate whose denominator is zero is ``None``: ``tpr``/``recall`` with no
        anomalous image, ``tnr`` with no normal image, ``precision`` with no positive call,
        ``f1`` with neither. ``balanced_accuracy`` is the mean of the defined ones among
        ``tpr`` and ``tnr`` (scikit-learn's behaviour with a single class), ``None`` if empty.

    >>> m = binary_metrics([1, 1, 0, 0, 1], [True, None, None, False, False])
    >>> (m["tp"], m["fp"], m["tn"], m["fn"], m["no_answer"])
    (1, 1, 1, 2, 2)
    >>> m["precision"], m["recall"], m["tnr"], m["accuracy"]
    (0.5, 0.3333333333333333, 0.5, 0.4)
    >>> round(m["f1"], 4), round(m["balanced_accuracy"], 4)
    (0.4, 0.4167)
    """
    y = _labels(labels).astype(bool)
    pred, answered = _predictions(predictions, y.size)
    correct = answered & (pred == y)
    tp = int(np.sum(correct & y))
    tn = int(np.sum(correct & ~y))
    fn = int(np.sum(y)) - tp
    fp = int(np.sum(~y)) - tn
    n = int(y.size)
    tpr = tp / (tp + fn) if tp + fn else None
    tnr = tn / (tn + fp) if tn + fp else None
    precision = tp / (tp + fp) if tp + fp else None
    f1 = 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else None
    defined = [r for r in (tpr, tnr) if r is not None]
    return {
        "f1": f1,
        "balanced_accuracy": sum(defined) / len(defined) if defined else None,
        "precision": precision,
        "recall": tpr,
        "accuracy": (tp + tn) / n if n else None,
        "tpr": tpr,
        "tnr": tnr,
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
        "n": n,
        "no_answer": int(np.sum(~answered)),
    }


def _threshold_predictions(scores: Sequence[float | None], threshold: float) -> list[bool | None]:
    return [None if s is None or not math.isfinite(float(s)) else float(s) > threshold for s in scores]


def f1_at_threshold(labels: Sequence[int], scores: Sequence[float | None], threshold: float) -> float | None:
    """F1 of the decision ``score > threshold``; a ``None`` score counts as no answer.

    >>> f1_at_threshold([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9], 0.5)
    0.6666666666666666
    >>> f1_at_threshold([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9], 0.4)
    0.8
    """
    return binary_metrics(labels, _threshold_predictions(scores, threshold))["f1"]


def balanced_accuracy_at_threshold(
    labels: Sequence[int], scores: Sequence[float | None], threshold: float
) -> float | None:
    """Balanced accuracy (mean of TPR and TNR) of the decision ``score > threshold``.

    >>> balanced_accuracy_at_threshold([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9], 0.5)
    0.75
    """
    return binary_metrics(labels, _threshold_predictions(scores, threshold))["balanced_accuracy"]


def oracle_f1(labels: Sequence[int], scores: Sequence[float]) -> tuple[float | None, float | None]:
    """Best F1 over all thresholds, read off the precision-recall curve.

    **Oracle**: the threshold is chosen on the test labels themselves, so this is an upper
    bound for reporting, never a deployable operating point.

    Returns:
        ``(best_f1, threshold)`` where ``threshold`` follows this module's strict convention:
        ``f1_at_threshold(labels, scores, threshold) == best_f1``. It is the midpoint between
        the lowest score called anomalous and the next lower distinct score (just below the
        minimum score when every image is called anomalous). ``(None, None)`` when there is
        no anomalous image.

    >>> f1, thr = oracle_f1([0, 0, 1, 1, 0], [0.1, 0.3, 0.6, 0.8, 0.7])
    >>> round(f1, 6), round(thr, 6)
    (0.8, 0.45)
    >>> oracle_f1([0, 0], [0.1, 0.2])
    (None, None)
    """
    y = _labels(labels)
    s = _scores(scores, y.size)
    if not y.any():
        return None, None
    precision, recall, thresholds = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # the last point (P=1, R=0) has no threshold
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.argmax(f1))
    cut = float(thresholds[best])  # sklearn: anomalous when score >= cut
    lower = s[s < cut]
    thr = (cut + float(lower.max())) / 2 if lower.size else float(np.nextafter(cut, -np.inf))
    if not thr < cut:  # adjacent floats: the midpoint rounded up to the cut
        thr = float(lower.max())
    return float(f1[best]), thr


# --------------------------------------------------------------------------- pixel level


def _check_pairs(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> None:
    if len(masks) != len(maps):
        raise ValueError(f"{len(masks)} masks but {len(maps)} anomaly maps")
    for i, (m, a) in enumerate(zip(masks, maps)):
        if np.shape(m) != np.shape(a) or np.ndim(m) != 2:
            raise ValueError(f"pair {i}: mask {np.shape(m)} and map {np.shape(a)} must be the same 2-D shape")


def pixel_auroc(
    masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], max_pixels: int = 5_000_000
) -> float | None:
    """Pixel-level AUROC over all pixels of all images (flattened ``roc_auc_score``).

    Args:
        masks: bool ground truth per image (H, W); nonzero = anomalous.
        maps: float anomaly map per image, same shape as its mask.
        max_pixels: above this many pixels in total, every ``stride``-th pixel of the
            concatenated flattened images is used (``stride = ceil(total / max_pixels)``),
            deterministic and memory-bounded; the full arrays are never concatenated.

    Returns:
        The AUROC, or ``None`` when the (sampled) pixels contain no positive or no negative.

    >>> m = np.array([[0, 1], [0, 1]], bool)
    >>> pixel_auroc([m], [np.array([[0.1, 0.9], [0.5, 0.4]])])
    0.75
    """
    _check_pairs(masks, maps)
    total = sum(int(np.size(m)) for m in masks)
    if total == 0:
        return None
    stride = max(1, math.ceil(total / max_pixels))
    ys, ss = [], []
    offset = 0  # global flat index of the current image's first pixel
    for m, a in zip(masks, maps):
        n = int(np.size(m))
        start = (-offset) % stride
        ys.append(np.asarray(m).reshape(-1)[start::stride].astype(bool))
        ss.append(np.asarray(a, dtype=np.float32).reshape(-1)[start::stride])
        offset += n
    y = np.concatenate(ys)
    s = np.concatenate(ss)
    if not y.any() or y.all():
        return None
    return float(roc_auc_score(y, s))


def _regions(mask: np.ndarray, connectivity: int) -> tuple[np.ndarray, int]:
    structure = _EIGHT_CONNECTED if connectivity == 8 else _FOUR_CONNECTED
    labelled, n = ndimage.label(np.asarray(mask).astype(bool), structure=structure)
    return labelled, int(n)


def pro_curve(
    masks: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    num_thresholds: int | None = None,
    connectivity: int = 8,
) -> tuple[np.ndarray, np.ndarray] | None:
    """The per-region-overlap curve: ``(fpr, pro)`` arrays, fpr non-decreasing.

    Every connected component of every ground-truth mask is one region. At a threshold ``t``
    a pixel is predicted anomalous when ``score >= t``; PRO is the mean over all regions of
    the fraction of the region predicted anomalous, FPR the fraction of all normal pixels
    (over all images) predicted anomalous. The curve starts at (0, 0) and ends at (1, 1).

    Implementation (as in the MVTec AD reference code): each region pixel carries the weight
    ``1 / (|region| * n_regions)`` and each normal pixel ``1 / n_normal``; with pixels sorted
    by descending score, PRO and FPR are cumulative sums of these weights, read at the last
    pixel of every distinct score. No loop over thresholds or regions.

    Args:
        masks: bool ground truth per image (H, W).
        maps: anomaly map per image, same shape as its mask.
        num_thresholds: ``None`` evaluates every distinct score (exact; sorts all pixels,
            about 30 bytes of memory per pixel). An integer uses that many thresholds evenly
            spaced between the global min and max score (anomalib's binned mode), streamed
            image by image in O(image + num_thresholds) memory.
        connectivity: 8 (default, like anomalib and the MVTec reference) or 4.

    Returns:
        ``(fpr, pro)``, or ``None`` when there is no region or no normal pixel.
    """
    _check_pairs(masks, maps)
    if connectivity not in (4, 8):
        raise ValueError("connectivity must be 4 or 8")
    if num_thresholds is not None and num_thresholds < 2:
        raise ValueError("num_thresholds must be at least 2 (or None for exact)")
    if num_thresholds is None:
        return _pro_curve_exact(masks, maps, connectivity)
    return _pro_curve_binned(masks, maps, num_thresholds, connectivity)


def _pro_curve_exact(masks, maps, connectivity):  # noqa: ANN001, ANN202 - private helper
    ids_parts, score_parts, inv_sizes = [], [], [np.zeros(1)]
    next_id = 1
    for m, a in zip(masks, maps):
        labelled, n = _regions(m, connectivity)
        flat = labelled.reshape(-1).astype(np.int64)
        if n:
            sizes = np.bincount(flat, minlength=n + 1)[1:]
            inv_sizes.append(1.0 / sizes)
            flat[flat > 0] += next_id - 1
            next_id += n
        ids_parts.append(flat.astype(np.int32 if next_id < 2**31 else np.int64))
        score_parts.append(np.asarray(a, dtype=np.float64).reshape(-1))
    n_regions = next_id - 1
    if n_regions == 0:
        return None
    ids = np.concatenate(ids_parts)
    del ids_parts
    scores = np.concatenate(score_parts)
    del score_parts
    n_normal = int(np.count_nonzero(ids == 0))
    if n_normal == 0:
        return None
    inv = np.concatenate(inv_sizes)  # inv[0] = 0 for normal pixels

    order = np.argsort(scores, kind="stable")[::-1]
    scores = scores[order]
    ids = ids[order]
    del order
    # last index of every run of equal scores (descending order)
    keep = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
    del scores
    fp = np.cumsum(ids == 0)[keep] / n_normal
    pro = np.cumsum(inv[ids])[keep] / n_regions
    return _close_curve(fp, pro)


def _pro_curve_binned(masks, maps, num_thresholds, connectivity):  # noqa: ANN001, ANN202
    lo, hi = math.inf, -math.inf
    for a in maps:
        a = np.asarray(a, dtype=np.float64)
        if a.size:
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    if not math.isfinite(lo):
        return None
    thresholds = np.linspace(lo, hi, num_thresholds)
    nbins = num_thresholds + 1
    # bin b holds pixels with thresholds[b-1] <= score < thresholds[b]; a pixel is predicted
    # anomalous at threshold k (score >= thresholds[k]) iff its bin is > k.
    fp_hist = np.zeros(nbins, dtype=np.int64)
    pro_hist = np.zeros(nbins, dtype=np.float64)
    n_regions = 0
    for m, a in zip(masks, maps):
        labelled, n = _regions(m, connectivity)
        flat = labelled.reshape(-1)
        bins = np.searchsorted(thresholds, np.asarray(a, dtype=np.float64).reshape(-1), side="right")
        fp_hist += np.bincount(bins[flat == 0], minlength=nbins)
        if n:
            sizes = np.bincount(flat, minlength=n + 1).astype(np.float64)
            weights = np.zeros(n + 1)
            weights[1:] = 1.0 / sizes[1:]
            pos = flat > 0
            pro_hist += np.bincount(bins[pos], weights=weights[flat[pos]], minlength=nbins)
            n_regions += n
    n_normal = int(fp_hist.sum())
    if n_regions == 0 or n_normal == 0:
        return None
    # thresholds from high to low: at thresholds[k], count bins k+1 .. nbins-1
    fp = np.cumsum(fp_hist[::-1])[:-1] / n_normal
    pro = np.cumsum(pro_hist[::-1])[:-1] / n_regions
    return _close_curve(fp, pro)


def _close_curve(fp: np.ndarray, pro: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    fp = np.clip(fp, 0.0, 1.0)
    pro = np.clip(pro, 0.0, 1.0)
    return np.concatenate(([0.0], fp, [1.0])), np.concatenate(([0.0], pro, [1.0]))


def _area_up_to(x: np.ndarray, y: np.ndarray, limit: float) -> float:
    """Trapezoid area under ``y(x)`` for x in [0, limit], interpolating y at exactly ``limit``.

    ``x`` must be non-decreasing and start at 0 (vertical segments contribute nothing).
    """
    j = int(np.searchsorted(x, limit, side="right"))  # x[:j] <= limit < x[j:]
    xs, ys = x[:j], y[:j]
    if j < x.size and xs[-1] < limit:
        y_lim = ys[-1] + (y[j] - ys[-1]) * (limit - xs[-1]) / (x[j] - xs[-1])
        xs, ys = np.append(xs, limit), np.append(ys, y_lim)
    return float(np.sum(np.diff(xs) * (ys[1:] + ys[:-1]) / 2))


def aupro(
    masks: Sequence[np.ndarray],
    maps: Sequence[np.ndarray],
    fpr_limit: float = 0.3,
    num_thresholds: int | None = None,
    connectivity: int = 8,
) -> float | None:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit`` (MVTec AD).

    The PRO curve (see :func:`pro_curve`) is integrated with the trapezoid rule over
    ``FPR in [0, fpr_limit]``, the curve linearly interpolated at exactly ``fpr_limit``, and
    divided by ``fpr_limit`` so a perfect map scores 1.0. Regions are the connected
    components (8-connectivity by default, like anomalib) of all ground-truth masks.

    Args:
        masks: bool ground truth per image (H, W); normal images have empty masks.
        maps: float anomaly map per image, same shape as its mask.
        fpr_limit: upper FPR integration limit, in (0, 1].
        num_thresholds: ``None`` = every distinct score (exact); an integer = that many
            evenly spaced thresholds (less memory, slightly lower resolution).
        connectivity: 8 or 4.

    Returns:
        The AUPRO in [0, 1], or ``None`` when there is no ground-truth region (or no normal
        pixel).

    >>> gt = np.zeros((4, 4), bool); gt[1:3, 1:3] = True
    >>> aupro([gt], [gt.astype(float)])
    1.0
    >>> round(aupro([gt], [np.ones((4, 4))]), 6)  # constant map: line (0,0)-(1,1) -> 0.3/2
    0.15
    """
    if not 0.0 < fpr_limit <= 1.0:
        raise ValueError("fpr_limit must be in (0, 1]")
    curve = pro_curve(masks, maps, num_thresholds=num_thresholds, connectivity=connectivity)
    if curve is None:
        return None
    fpr, pro = curve
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


# --------------------------------------------------------------------------- localisation


def box_iou(pred: Box | None, gt: Box | None) -> float | None:
    """IoU of a predicted box with the ground-truth box.

    Returns:
        ``None`` when there is no ground truth (normal image), ``0.0`` when there is no
        prediction, the IoU otherwise.

    >>> box_iou(Box(0, 0, 0.5, 0.5), Box(0, 0, 0.5, 1.0))
    0.5
    >>> box_iou(None, Box(0, 0, 1, 1)), box_iou(Box(0, 0, 1, 1), None)
    (0.0, None)
    """
    if gt is None:
        return None
    if pred is None:
        return 0.0
    return float(pred.iou(gt))


def _resize_nearest(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    h, w = array.shape
    if (h, w) == tuple(shape):
        return array
    rows = np.minimum((np.arange(shape[0]) + 0.5) * h / shape[0], h - 1).astype(int)
    cols = np.minimum((np.arange(shape[1]) + 0.5) * w / shape[1], w - 1).astype(int)
    return array[np.ix_(rows, cols)]


def _peak_in(region: np.ndarray, anomaly_map: np.ndarray) -> tuple[float, float]:
    """Normalised (x, y) centre of the highest-scoring pixel of ``anomaly_map`` inside ``region``."""
    h, w = region.shape
    amap = _resize_nearest(np.asarray(anomaly_map, dtype=np.float64), (h, w))
    masked = np.where(region & ~np.isnan(amap), amap, -np.inf)
    if not np.isfinite(masked).any():  # map all NaN inside the region: fall back to any pixel
        masked = np.where(region, 0.0, -np.inf)
    y, x = np.unravel_index(int(np.argmax(masked)), masked.shape)
    return (x + 0.5) / w, (y + 0.5) / h


def _largest_component_centroid(mask: np.ndarray) -> tuple[float, float]:
    labelled, n = ndimage.label(mask, structure=_EIGHT_CONNECTED)
    sizes = np.bincount(labelled.reshape(-1), minlength=n + 1)
    sizes[0] = 0
    ys, xs = np.nonzero(labelled == int(np.argmax(sizes)))
    h, w = mask.shape
    return (float(xs.mean()) + 0.5) / w, (float(ys.mean()) + 0.5) / h


def box_hit(
    pred: Box | None,
    gt: np.ndarray | Box | None,
    anomaly_map: np.ndarray | None = None,
) -> bool | None:
    """Whether a predicted box localises the ground-truth defect.

    A hit is ``IoU(pred, box around the ground truth) >= 0.5`` **or** ``pred`` contains the
    defect's peak (borders inclusive):

    * with ``anomaly_map``: the centre of the highest-scoring map pixel among ground-truth
      pixels (first in row-major order on ties; a map of a different size is resampled to the
      mask's size, nearest neighbour);
    * without: the centroid of the largest ground-truth connected component (8-connectivity).

    Args:
        pred: predicted box (normalised), or ``None`` (a miss).
        gt: ground truth as a bool mask (H, W) or a normalised :class:`Box`. A Box ground
            truth with a map uses the map pixels whose centres lie in the box; without a map
            its peak is the box centre.
        anomaly_map: optional anomaly map (any 2-D size when ``gt`` is a mask).

    Returns:
        ``None`` when there is no ground truth (``None`` or an empty mask), else the verdict.

    >>> gt = np.zeros((10, 10), bool); gt[0:2, 0:2] = True; gt[6:10, 6:10] = True
    >>> box_hit(Box(0.55, 0.55, 0.85, 0.85), gt)  # IoU 0.09, but holds the big blob's centroid
    True
    >>> amap = np.zeros((10, 10)); amap[0, 0] = 1.0
    >>> box_hit(Box(0.55, 0.55, 0.85, 0.85), gt, amap)  # the map's peak is in the small blob
    False
    """
    if gt is None:
        return None
    if isinstance(gt, Box):
        gt_box = gt
        region = None
    else:
        mask = np.asarray(gt).astype(bool)
        if mask.ndim != 2:
            raise ValueError(f"a ground-truth mask must be 2-D, got shape {mask.shape}")
        gt_box = Box.from_mask(mask)
        if gt_box is None:
            return None
        region = mask
    if pred is None:
        return False
    if pred.iou(gt_box) >= 0.5:
        return True
    if anomaly_map is not None:
        amap = np.asarray(anomaly_map, dtype=np.float64)
        if amap.ndim != 2:
            raise ValueError(f"an anomaly map must be 2-D, got shape {amap.shape}")
        if region is None:  # Box ground truth: the map pixels whose centres lie in the box
            h, w = amap.shape
            cx = (np.arange(w) + 0.5) / w
            cy = (np.arange(h) + 0.5) / h
            region = ((cy >= gt_box.y1) & (cy <= gt_box.y2))[:, None] & ((cx >= gt_box.x1) & (cx <= gt_box.x2))[None, :]
            if not region.any():  # box thinner than a map pixel: the pixel holding its centre
                x, y = gt_box.center
                region = np.zeros((h, w), bool)
                region[min(int(y * h), h - 1), min(int(x * w), w - 1)] = True
        x, y = _peak_in(region, amap)
    elif region is None:
        x, y = gt_box.center
    else:
        x, y = _largest_component_centroid(region)
    return bool(pred.contains(x, y))


# --------------------------------------------------------------------------- other


def _norm_type(value: str) -> str:
    return re.sub(r"[\s_\-]+", "_", str(value).strip().lower())


def defect_type_accuracy(
    true_types: Sequence[str | None], pred_types: Sequence[str | None]
) -> float | None:
    """Fraction of anomalous samples whose defect type was named correctly.

    Samples whose true type is ``None`` (normal images) are skipped; a ``None`` prediction
    on an anomalous sample is wrong. Names are compared case-insensitively with runs of
    spaces, ``-`` and ``_`` treated alike (``"Broken large" == "broken_large"``).

    Returns:
        The accuracy, or ``None`` when no sample has a true type.

    >>> defect_type_accuracy(["crack", None, "Broken_Large", "hole"], ["crack", "hole", "broken large", None])
    0.6666666666666666
    >>> defect_type_accuracy([None, None], ["crack", None]) is None
    True
    """
    if len(true_types) != len(pred_types):
        raise ValueError(f"{len(true_types)} true types but {len(pred_types)} predictions")
    pairs = [(t, p) for t, p in zip(true_types, pred_types) if t is not None]
    if not pairs:
        return None
    hits = sum(p is not None and _norm_type(t) == _norm_type(p) for t, p in pairs)
    return hits / len(pairs)


def latency_percentiles(ms_list: Sequence[float | None]) -> dict[str, float | None]:
    """Median and 95th percentile (linear interpolation) of latencies; ``None`` entries ignored.

    >>> latency_percentiles([10, 20, 30, 40, 50])
    {'p50': 30.0, 'p95': 48.0}
    >>> latency_percentiles([])
    {'p50': None, 'p95': None}
    """
    values = np.array([float(v) for v in ms_list if v is not None], dtype=np.float64)
    if values.size == 0:
        return {"p50": None, "p95": None}
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": float(p50), "p95": float(p95)}


def mean_std(values: Sequence[float | None], ddof: int = 0) -> tuple[float | None, float | None]:
    """Mean and standard deviation of the non-``None`` (and non-NaN) values.

    Args:
        values: numbers, ``None`` entries ignored.
        ddof: delta degrees of freedom (0 = population std, 1 = sample std). With fewer than
            ``ddof + 1`` values the std is ``0.0``.

    Returns:
        ``(mean, std)``, or ``(None, None)`` when there is no value.

    >>> mean_std([1.0, None, 3.0])
    (2.0, 1.0)
    >>> mean_std([None])
    (None, None)
    """
    arr = np.array([float(v) for v in values if v is not None], dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    if arr.size == 0:
        return None, None
    std = float(np.std(arr, ddof=ddof)) if arr.size > ddof else 0.0
    return float(arr.mean()), std

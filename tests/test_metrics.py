"""Tests for iad_agent.eval.metrics: hand-computed values, None cases, AUPRO vs a naive reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from iad_agent.eval.metrics import (
    aupro,
    balanced_accuracy_at_threshold,
    binary_metrics,
    box_hit,
    box_iou,
    defect_type_accuracy,
    f1_at_threshold,
    image_ap,
    image_auroc,
    latency_percentiles,
    mean_std,
    oracle_f1,
    pixel_auroc,
    pro_curve,
)
from iad_agent.types import Box

# --------------------------------------------------------------------------- image level


def test_image_auroc_exact_fraction():
    # positives 0.5, 0.9; negatives 0.1, 0.6, 0.7 -> pairs won: 0.5 beats 0.1 only (1/3),
    # 0.9 beats all (3/3) -> 4/6
    assert image_auroc([0, 1, 0, 0, 1], [0.1, 0.5, 0.6, 0.7, 0.9]) == pytest.approx(4 / 6)


def test_image_auroc_ties_count_half():
    assert image_auroc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)


def test_image_auroc_perfect_and_inverted():
    assert image_auroc([0, 0, 1], [0.1, 0.2, 0.3]) == 1.0
    assert image_auroc([0, 0, 1], [0.3, 0.2, 0.1]) == 0.0


def test_image_ap_hand_computed():
    # ranking: pos (P=1, R=1/2), neg, pos (P=2/3, R=1) -> AP = 1/2*1 + 1/2*2/3
    assert image_ap([1, 0, 1], [0.9, 0.8, 0.1]) == pytest.approx(5 / 6)


@pytest.mark.parametrize("fn", [image_auroc, image_ap])
def test_single_class_gives_none(fn):
    assert fn([0, 0, 0], [0.1, 0.2, 0.3]) is None
    assert fn([1, 1], [0.1, 0.2]) is None
    assert fn([], []) is None


def test_bad_labels_rejected():
    with pytest.raises(ValueError):
        image_auroc([0, 2], [0.1, 0.2])
    with pytest.raises(ValueError):
        image_auroc([0, 1], [0.1])


def test_binary_metrics_hand_computed():
    m = binary_metrics([1, 1, 1, 0, 0, 0, 0], [True, True, False, True, False, False, False])
    # tp=2 fn=1 fp=1 tn=3
    assert (m["tp"], m["fn"], m["fp"], m["tn"]) == (2, 1, 1, 3)
    assert m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == m["tpr"] == pytest.approx(2 / 3)
    assert m["tnr"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["f1"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 3 / 4) / 2)
    assert m["no_answer"] == 0


def test_binary_metrics_none_is_always_wrong():
    # None on a normal image is a false alarm, on an anomalous image a miss
    m = binary_metrics([0, 1], [None, None])
    assert (m["tp"], m["fp"], m["tn"], m["fn"]) == (0, 1, 0, 1)
    assert m["accuracy"] == 0.0
    assert m["balanced_accuracy"] == 0.0
    assert m["f1"] == 0.0
    assert m["precision"] == 0.0  # the None on the normal image counts as a positive call
    assert m["no_answer"] == 2


def test_binary_metrics_undefined_rates_are_none():
    m = binary_metrics([0, 0], [False, False])
    assert m["tpr"] is None and m["recall"] is None and m["precision"] is None and m["f1"] is None
    assert m["tnr"] == 1.0 and m["balanced_accuracy"] == 1.0
    m = binary_metrics([1, 1], [True, False])
    assert m["tnr"] is None and m["balanced_accuracy"] == 0.5
    assert binary_metrics([], [])["accuracy"] is None


def test_threshold_is_strict():
    labels = [0, 1, 1]
    scores = [0.2, 0.5, 0.8]
    # at 0.5 the 0.5-scored anomaly is NOT called anomalous
    assert f1_at_threshold(labels, scores, 0.5) == pytest.approx(2 / 3)
    assert f1_at_threshold(labels, scores, 0.49) == 1.0
    assert balanced_accuracy_at_threshold(labels, scores, 0.5) == pytest.approx(0.75)
    assert balanced_accuracy_at_threshold(labels, scores, 0.1) == pytest.approx(0.5)


def test_threshold_none_score_is_no_answer():
    assert f1_at_threshold([1, 0], [None, 0.0], 0.5) == 0.0
    assert balanced_accuracy_at_threshold([1, 0], [0.9, None], 0.5) == pytest.approx(0.5)


def test_oracle_f1_hand_computed():
    f1, thr = oracle_f1([0, 0, 1, 1, 0], [0.1, 0.3, 0.6, 0.8, 0.7])
    assert f1 == pytest.approx(0.8)
    assert thr == pytest.approx(0.45)
    assert f1_at_threshold([0, 0, 1, 1, 0], [0.1, 0.3, 0.6, 0.8, 0.7], thr) == pytest.approx(0.8)


def test_oracle_f1_all_called_anomalous():
    f1, thr = oracle_f1([1, 1, 0], [0.1, 0.2, 0.05])  # best is cutting at 0.1
    assert f1 == 1.0 and 0.05 < thr < 0.1
    f1, thr = oracle_f1([1, 1], [0.3, 0.7])  # only positives: call everything
    assert f1 == 1.0 and thr < 0.3


def test_oracle_f1_no_positive():
    assert oracle_f1([0, 0], [0.1, 0.9]) == (None, None)


@pytest.mark.parametrize("seed", range(20))
def test_oracle_f1_matches_bruteforce(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 30))
    labels = rng.integers(0, 2, n)
    labels[0] = 1
    scores = np.round(rng.random(n), 1)  # ties
    f1, thr = oracle_f1(labels, scores)
    brute = max(f1_at_threshold(labels, scores, t) or 0.0 for t in np.append(scores, -1.0))
    assert f1 == pytest.approx(brute)
    assert f1_at_threshold(labels, scores, thr) == pytest.approx(f1)


# --------------------------------------------------------------------------- pixel AUROC


def test_pixel_auroc_hand_computed():
    masks = [np.array([[0, 1], [0, 1]], bool), np.zeros((1, 2), bool)]
    maps = [np.array([[0.1, 0.9], [0.5, 0.4]]), np.array([[0.95, 0.0]])]
    # positives 0.9, 0.4; negatives 0.1, 0.5, 0.95, 0.0 -> wins: 0.9: 3, 0.4: 2 -> 5/8
    assert pixel_auroc(masks, maps) == pytest.approx(5 / 8)


def test_pixel_auroc_none_without_positives_or_negatives():
    assert pixel_auroc([np.zeros((3, 3), bool)], [np.random.rand(3, 3)]) is None
    assert pixel_auroc([np.ones((3, 3), bool)], [np.random.rand(3, 3)]) is None
    assert pixel_auroc([], []) is None


def test_pixel_auroc_shape_mismatch():
    with pytest.raises(ValueError):
        pixel_auroc([np.zeros((3, 3), bool)], [np.zeros((3, 4))])


def test_pixel_auroc_subsampling_is_deterministic_stride():
    rng = np.random.default_rng(0)
    masks = [rng.random((7, 9)) > 0.7 for _ in range(3)]
    maps = [rng.random((7, 9)) + 0.4 * m for m in masks]
    full = pixel_auroc(masks, maps)
    assert full == pytest.approx(roc_auc_score(np.concatenate([m.ravel() for m in masks]),
                                               np.concatenate([a.ravel() for a in maps])))
    sub = pixel_auroc(masks, maps, max_pixels=50)  # 189 pixels -> stride 4
    y = np.concatenate([m.ravel() for m in masks])[::4]
    s = np.concatenate([a.ravel() for a in maps])[::4]
    assert sub == pytest.approx(roc_auc_score(y, s))
    assert sub == pixel_auroc(masks, maps, max_pixels=50)


# --------------------------------------------------------------------------- AUPRO


def naive_pro_curve(masks, maps, thresholds, connectivity=8):
    """Straightforward loop: for every threshold, every image, every region."""
    structure = np.ones((3, 3)) if connectivity == 8 else None
    labelled = [ndimage.label(m, structure=structure) for m in masks]
    n_regions = sum(n for _, n in labelled)
    n_neg = sum(int((~m.astype(bool)).sum()) for m in masks)
    fprs, pros = [0.0], [0.0]
    for t in sorted(thresholds, reverse=True):
        fp = 0
        overlaps = []
        for (lab, n), m, a in zip(labelled, masks, maps):
            pred = a >= t
            fp += int((pred & ~m.astype(bool)).sum())
            for r in range(1, n + 1):
                region = lab == r
                overlaps.append((pred & region).sum() / region.sum())
        fprs.append(fp / n_neg)
        pros.append(sum(overlaps) / n_regions)
    fprs.append(1.0)
    pros.append(1.0)
    return np.array(fprs), np.array(pros)


def naive_area(fprs, pros, limit):
    """Segment-by-segment area of the piecewise-linear curve clipped to [0, limit]."""
    area = 0.0
    for (x0, y0), (x1, y1) in zip(zip(fprs[:-1], pros[:-1]), zip(fprs[1:], pros[1:])):
        if x1 <= x0 or x0 >= limit:
            continue
        xe = min(x1, limit)
        ye = y0 + (y1 - y0) * (xe - x0) / (x1 - x0)
        area += (xe - x0) * (y0 + ye) / 2
    return area / limit


def naive_aupro(masks, maps, limit=0.3, num_thresholds=None, connectivity=8):
    scores = np.concatenate([a.ravel() for a in maps])
    if num_thresholds is None:
        thresholds = np.unique(scores)
    else:
        thresholds = np.linspace(scores.min(), scores.max(), num_thresholds)
    return naive_area(*naive_pro_curve(masks, maps, thresholds, connectivity), limit)


def random_case(rng):
    n_images = int(rng.integers(1, 5))
    masks, maps = [], []
    for _ in range(n_images):
        h, w = int(rng.integers(3, 12)), int(rng.integers(3, 12))
        if rng.random() < 0.3:
            mask = np.zeros((h, w), bool)  # a normal image
        else:
            mask = rng.random((h, w)) > rng.uniform(0.5, 0.9)
        noise = rng.random((h, w))
        amap = noise + rng.uniform(0, 1.5) * mask
        if rng.random() < 0.5:
            amap = np.round(amap, 1)  # many ties
        masks.append(mask)
        maps.append(amap)
    if not any(m.any() for m in masks):
        masks[0][0, 0] = True
    if all(m.all() for m in masks):
        masks[0][-1, -1] = False
    return masks, maps


@pytest.mark.parametrize("seed", range(40))
def test_aupro_matches_naive_reference(seed):
    rng = np.random.default_rng(seed)
    masks, maps = random_case(rng)
    limit = float(rng.choice([0.05, 0.3, 0.5, 1.0]))
    assert aupro(masks, maps, fpr_limit=limit) == pytest.approx(naive_aupro(masks, maps, limit), abs=1e-9)
    assert aupro(masks, maps, fpr_limit=limit, connectivity=4) == pytest.approx(
        naive_aupro(masks, maps, limit, connectivity=4), abs=1e-9
    )


@pytest.mark.parametrize("seed", range(20))
def test_aupro_binned_matches_naive_reference(seed):
    rng = np.random.default_rng(100 + seed)
    masks, maps = random_case(rng)
    k = int(rng.integers(2, 40))
    got = aupro(masks, maps, fpr_limit=0.3, num_thresholds=k)
    assert got == pytest.approx(naive_aupro(masks, maps, 0.3, num_thresholds=k), abs=1e-9)


def test_pro_curve_exact_matches_naive_points():
    rng = np.random.default_rng(7)
    masks, maps = random_case(rng)
    fpr, pro = pro_curve(masks, maps)
    nf, npro = naive_pro_curve(masks, maps, np.unique(np.concatenate([a.ravel() for a in maps])))
    np.testing.assert_allclose(fpr, nf, atol=1e-12)
    np.testing.assert_allclose(pro, npro, atol=1e-12)
    assert np.all(np.diff(fpr) >= 0)


def test_aupro_perfect_map_is_one():
    gt = np.zeros((8, 8), bool)
    gt[1:3, 1:4] = True
    gt[5:8, 6:8] = True
    normal = np.zeros((8, 8), bool)
    maps = [gt.astype(float), np.zeros((8, 8))]
    assert aupro([gt, normal], maps) == pytest.approx(1.0)
    assert aupro([gt, normal], maps, num_thresholds=10) == pytest.approx(1.0)


def test_aupro_constant_map():
    # every pixel has the same score: the curve is the straight line (0,0)-(1,1), so the area
    # up to L is L^2/2 and the normalised AUPRO is L/2
    gt = np.zeros((5, 5), bool)
    gt[2, 2] = True
    for limit in (0.3, 0.1, 1.0):
        assert aupro([gt], [np.full((5, 5), 0.7)], fpr_limit=limit) == pytest.approx(limit / 2)


def test_aupro_inverted_map_is_zero():
    gt = np.zeros((5, 5), bool)
    gt[1:3, 1:3] = True
    # every normal pixel outscores every defect pixel: PRO stays 0 until FPR = 1
    assert aupro([gt], [(~gt).astype(float)]) == pytest.approx(0.0)


def test_aupro_hand_computed_two_regions():
    # one row: region A = pixels 0,1 (scores 0.9, 0.2); region B = pixel 5 (0.8);
    # 7 normal pixels: one at 0.85, six at 0.1.
    gt = np.zeros((1, 10), bool)
    gt[0, [0, 1, 5]] = True
    amap = np.full((1, 10), 0.1)
    amap[0, [0, 1, 5, 3]] = [0.9, 0.2, 0.8, 0.85]
    # curve: (0,0) (0,.25) (1/7,.25) (1/7,.75) (1/7,1) (1,1)
    # area to 0.3 = 0.25/7 + 1*(0.3 - 1/7) ; normalised by 0.3 -> 9/14
    assert aupro([gt], [amap]) == pytest.approx(9 / 14)
    # to FPR 0.1 (< 1/7) the curve is flat at 0.25 after its vertical start
    assert aupro([gt], [amap], fpr_limit=0.1) == pytest.approx(0.25)


def test_aupro_uses_8_connectivity():
    # pixels (0,0),(0,1) and the diagonal neighbour (1,2): one region with 8-connectivity,
    # two regions with 4-connectivity
    gt = np.zeros((3, 3), bool)
    gt[0, 0] = gt[0, 1] = gt[1, 2] = True
    amap = np.full((3, 3), 0.5)
    amap[0, 0] = amap[0, 1] = 1.0
    amap[1, 2] = 0.0
    # 8-conn: at t=1, PRO = 2/3, then flat until FPR=1 -> 2/3
    assert aupro([gt], [amap]) == pytest.approx(2 / 3)
    # 4-conn: PRO = (1 + 0)/2 = 1/2
    assert aupro([gt], [amap], connectivity=4) == pytest.approx(1 / 2)


def test_aupro_fpr_counts_normal_images():
    gt = np.zeros((2, 2), bool)
    gt[0, 0] = True
    amap = np.where(gt, 1.0, 0.0)
    normal = np.zeros((2, 2), bool)
    hot = np.zeros((2, 2))
    hot[0, 0] = 2.0  # one false positive (of 7 normal pixels) before the defect appears
    # curve: (0,0) (1/7,0) (1/7,1) (1,1) -> area to 0.3 = 0.3 - 1/7
    assert aupro([gt, normal], [amap, hot]) == pytest.approx((0.3 - 1 / 7) / 0.3)


def test_aupro_none_cases():
    assert aupro([np.zeros((4, 4), bool)], [np.random.rand(4, 4)]) is None
    assert aupro([], []) is None
    assert aupro([np.ones((2, 2), bool)], [np.random.rand(2, 2)]) is None  # no normal pixel
    with pytest.raises(ValueError):
        aupro([np.ones((2, 2), bool)], [np.random.rand(2, 2)], fpr_limit=0.0)


# --------------------------------------------------------------------------- boxes


def test_box_iou_cases():
    assert box_iou(Box(0, 0, 0.5, 0.5), Box(0.25, 0, 0.75, 0.5)) == pytest.approx(1 / 3)
    assert box_iou(None, Box(0, 0, 1, 1)) == 0.0
    assert box_iou(Box(0, 0, 1, 1), None) is None
    assert box_iou(None, None) is None


def two_blob_mask():
    gt = np.zeros((10, 10), bool)
    gt[0:2, 0:2] = True  # small blob, centroid (0.1, 0.1)
    gt[6:10, 6:10] = True  # big blob, centroid (0.8, 0.8)
    return gt


def test_box_hit_none_cases():
    assert box_hit(Box(0, 0, 1, 1), None) is None
    assert box_hit(Box(0, 0, 1, 1), np.zeros((4, 4), bool)) is None
    assert box_hit(None, two_blob_mask()) is False
    assert box_hit(None, Box(0, 0, 1, 1)) is False


def test_box_hit_by_iou():
    gt = np.zeros((8, 8), bool)
    gt[2:6, 2:6] = True  # box (0.25, 0.25, 0.75, 0.75), area 0.25 (dyadic: exact floats)
    amap = np.zeros((8, 8))
    amap[5, 5] = 1.0  # peak at (0.6875, 0.6875), outside the boxes below
    assert box_hit(Box(0.25, 0.25, 0.75, 0.75), gt, amap) is True
    # IoU exactly 0.5 counts
    assert box_iou(Box(0.25, 0.25, 0.75, 0.5), Box.from_mask(gt)) == 0.5
    assert box_hit(Box(0.25, 0.25, 0.75, 0.5), gt, amap) is True
    # IoU just below 0.5, peak outside -> miss
    assert box_hit(Box(0.25, 0.25, 0.75, 0.484375), gt, amap) is False


def test_box_hit_largest_component_centroid_without_map():
    gt = two_blob_mask()
    assert box_hit(Box(0.7, 0.7, 0.9, 0.9), gt) is True  # holds the big blob's centroid
    assert box_hit(Box(0.0, 0.0, 0.2, 0.2), gt) is False  # the small blob only
    assert box_hit(Box(0.61, 0.61, 0.79, 0.79), gt) is False  # inside big blob, misses centroid


def test_box_hit_peak_restricted_to_ground_truth():
    gt = two_blob_mask()
    amap = np.zeros((10, 10))
    amap[4, 4] = 10.0  # global max outside the ground truth: must be ignored
    amap[1, 1] = 1.0  # peak among GT pixels, centre (0.15, 0.15)
    assert box_hit(Box(0.1, 0.1, 0.2, 0.2), gt, amap) is True
    assert box_hit(Box(0.7, 0.7, 0.9, 0.9), gt, amap) is False  # centroid no longer used
    assert box_hit(Box(0.35, 0.35, 0.5, 0.5), gt, amap) is False  # holds only the off-GT max


def test_box_hit_map_of_other_resolution():
    gt = two_blob_mask()
    amap = np.zeros((5, 5))  # half resolution
    amap[0, 0] = 1.0  # covers full-res pixels 0..1 x 0..1 -> the small GT blob
    assert box_hit(Box(0.0, 0.0, 0.2, 0.2), gt, amap) is True
    assert box_hit(Box(0.7, 0.7, 0.9, 0.9), gt, amap) is False


def test_box_hit_box_ground_truth():
    gt = Box(0.0, 0.0, 0.4, 0.4)
    assert box_hit(Box(0.15, 0.15, 0.25, 0.25), gt) is True  # holds the centre (0.2, 0.2)
    assert box_hit(Box(0.25, 0.25, 0.35, 0.35), gt) is False
    amap = np.zeros((10, 10))
    amap[3, 3] = 1.0  # peak inside the box at (0.35, 0.35)
    amap[9, 9] = 5.0  # outside the GT box: ignored
    assert box_hit(Box(0.3, 0.3, 0.4, 0.4), gt, amap) is True
    assert box_hit(Box(0.15, 0.15, 0.25, 0.25), gt, amap) is False


# --------------------------------------------------------------------------- other


def test_defect_type_accuracy():
    true = ["crack", None, "hole", "scratch", "broken_large"]
    pred = ["crack", "crack", None, "hole", "Broken Large"]
    # anomalous: crack ok, hole wrong (no answer), scratch wrong, broken_large ok -> 2/4
    assert defect_type_accuracy(true, pred) == pytest.approx(0.5)
    assert defect_type_accuracy([None, None], ["crack", None]) is None
    assert defect_type_accuracy([], []) is None
    with pytest.raises(ValueError):
        defect_type_accuracy(["a"], [])


def test_latency_percentiles():
    assert latency_percentiles([10, 20, 30, 40, 50]) == {"p50": 30.0, "p95": pytest.approx(48.0)}
    assert latency_percentiles(list(range(1, 101))) == {"p50": 50.5, "p95": pytest.approx(95.05)}
    assert latency_percentiles([None, 7.0]) == {"p50": 7.0, "p95": 7.0}
    assert latency_percentiles([]) == {"p50": None, "p95": None}


def test_mean_std():
    assert mean_std([2.0, None, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) == (5.0, 2.0)
    mean, std = mean_std([1.0, 2.0, 3.0], ddof=1)
    assert mean == 2.0 and std == pytest.approx(1.0)
    assert mean_std([3.0]) == (3.0, 0.0)
    assert mean_std([3.0], ddof=1) == (3.0, 0.0)
    assert mean_std([None, None]) == (None, None)
    assert mean_std([]) == (None, None)
    assert math.isfinite(mean_std([1.0, float("nan"), 3.0])[0])

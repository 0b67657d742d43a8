"""Issue 11 item 4: the threshold keeps its promise at 1–4 shots (packaged prior; real hazelnut images)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from iad_agent.vision.normal_bank import Calibration, threshold_for_fpr
from iad_agent.vision.threshold_prior import PRIOR_KEYS, prior_threshold, threshold_prior

P = {"view_shift": 0.3, "view_sigma": 0.1, "loo_shift": 0.0, "sigma": 0.07, "nu0": 8.0}


def test_doctests():
    import doctest

    from iad_agent.vision import threshold_prior as module

    assert doctest.testmod(module).failed == 0


def test_packaged_prior_loads_with_plausible_constants():
    prior = threshold_prior()
    assert prior["version"] >= 1
    for kind in ("global", "knn"):
        c = prior[kind]
        assert set(c) == set(PRIOR_KEYS) and all(math.isfinite(v) for v in c.values())
        # log-scale spreads of a few percent to tens of percent; views easier than other good parts
        assert 0.01 < c["sigma"] < 0.5 and 0.01 < c["view_sigma"] < 0.5 and c["nu0"] > 0
        assert 0.0 < c["view_shift"] < 1.0 and abs(c["loo_shift"]) < 0.3


def test_prior_threshold_falls_with_fpr_and_follows_many_scores():
    few = [1.0, 1.1, 0.9, 1.05]
    ts = [prior_threshold(few, f, P) for f in (0.001, 0.01, 0.05, 0.2, 0.5)]
    assert all(a > b for a, b in zip(ts, ts[1:]))
    # four identical scores do not give a knife-edge threshold: the prior's spread (8 pseudo-scores
    # against 3 degrees of freedom of the held-out ones) holds it up
    expected = math.exp(1.6449 * 0.07 * math.sqrt(8 / 11 * (1 + 1 / 4)))
    assert prior_threshold([1.0, 1.0, 1.0, 1.0], 0.05, P) == pytest.approx(expected, rel=1e-4)
    # with many scores the held-out spread wins over the prior (shrinkage)
    rng = np.random.default_rng(0)
    many = np.exp(rng.normal(0.0, 0.3, 4000))
    assert prior_threshold(many, 0.05, P) == pytest.approx(math.exp(1.645 * 0.3), rel=0.05)
    # one good image: the views' median, moved up by how much easier views are than other good parts
    assert prior_threshold([0.8, 0.8, 0.8], 0.5, P, views=True) == pytest.approx(0.8 * math.exp(0.3))
    assert prior_threshold(few, 0.05, P, bank_size_factor=0.9) == pytest.approx(0.9 * prior_threshold(few, 0.05, P))


def test_stored_calibrations_without_a_prior_keep_their_rule_and_with_one_round_trip():
    old = {"fpr": 0.05, "method": "leave-one-out", "global_scores": [1.0, 1.2, 0.9], "aligned_scores": [1.0, 1.0, 1.0],
           "patch_threshold": 2.0, "knn_scores": [30.0, 33.0, 29.0], "knn_patch_threshold": 50.0,
           "bank_size_factor": 0.95, "knn_bank_size_factor": 0.9}
    cal = Calibration(**old)
    assert cal.threshold == pytest.approx(threshold_for_fpr(old["global_scores"], 0.05) * 0.95)
    assert cal.knn_threshold == pytest.approx(threshold_for_fpr(old["knn_scores"], 0.05) * 0.9)
    new = Calibration(**old, prior=threshold_prior())
    again = Calibration(**json.loads(json.dumps(vars(new))))
    assert again.threshold == new.threshold and again.knn_threshold_at(0.01) == new.knn_threshold_at(0.01)
    assert new.threshold == pytest.approx(prior_threshold(old["global_scores"], 0.05, new.prior["global"],
                                                          bank_size_factor=0.95))


def test_a_stored_prior_lacking_a_constant_is_refused_when_a_product_loads():
    from iad_agent.product_files import _threshold_prior_ok

    prior = threshold_prior()
    assert _threshold_prior_ok(json.loads(json.dumps(prior)))
    for broken in ({**prior, "knn": {k: v for k, v in prior["knn"].items() if k != "sigma"}},
                   {**prior, "global": {**prior["global"], "nu0": float("nan")}}, {"global": prior["global"]}, []):
        assert not _threshold_prior_ok(broken)


# ------------------------------------------------------------------ real images


@pytest.fixture(scope="module")
def hazelnut(data_root):
    from iad_agent.imageio import load_image
    from iad_agent.product import list_images
    from iad_agent.vision.features import FeatureConfig, FeatureExtractor
    from iad_agent.vision.similarity import self_similarity_map

    good = list_images(data_root / "mvtec_ad/hazelnut/train/good")
    bad = [p for d in sorted((data_root / "mvtec_ad/hazelnut/test").iterdir()) if d.name != "good"
           for p in list_images(d)]
    extractor = FeatureExtractor(FeatureConfig())
    images = {p: load_image(p) for p in good + bad}
    grids = dict(zip(good + bad, extractor([images[p] for p in good + bad])))
    selfs = {p: self_similarity_map(g) for p, g in grids.items()}
    return good, bad, extractor, images, grids, selfs


def _register(hazelnut, refs):
    from iad_agent.vision.learn import learn
    from iad_agent.vision.normal_bank import NormalBank

    _, _, extractor, images, grids, _ = hazelnut
    bank = NormalBank(extractor.config)
    bank.add([grids[p] for p in refs], [str(p) for p in refs])
    bank.scoring, bank.calibration = learn(bank, extractor, lambda i: images[refs[i]], 0.05)
    return bank


def _scores(hazelnut, bank, paths):
    from iad_agent.vision.normal_bank import image_score

    _, _, _, _, grids, selfs = hazelnut
    return np.array([image_score(bank.scoring.fuse(bank.patch_distances(grids[p]), selfs[p] if bank.scoring.uses_self else None))
                     for p in paths])


def test_four_good_images_give_a_threshold_good_parts_pass_and_defects_do_not(hazelnut):
    good, bad, *_ = hazelnut
    refs = [good[i] for i in np.linspace(0, len(good) - 1, 4).round().astype(int)]
    bank = _register(hazelnut, refs)
    cal = bank.calibration
    assert cal.prior == threshold_prior()
    others = _scores(hazelnut, bank, [p for p in good if p not in refs])  # 46 good parts never seen
    defects = _scores(hazelnut, bank, bad)
    far, caught = float((others > cal.threshold).mean()), float((defects > cal.threshold).mean())
    assert far <= 0.15, f"{far:.2f} of good parts flagged at a promised 0.05"
    assert caught >= 0.5, f"only {caught:.2f} of the defects flagged"
    # a lower promised rate flags fewer good parts; the threshold is what api.threshold_for_fpr inverts
    assert cal.threshold_at(0.01) > cal.threshold > cal.threshold_at(0.2)


def test_one_good_image_threshold_corrects_for_too_easy_views(hazelnut):
    good, *_ = hazelnut
    bank = _register(hazelnut, good[:1])
    cal = bank.calibration
    assert cal.method == "augmented-views"
    old_rule = threshold_for_fpr(cal.global_scores, 0.05)
    others = _scores(hazelnut, bank, good[1:])
    # hazelnut's views are far easier than its other good parts: the old rule flagged nearly all
    assert (others > old_rule).mean() > 0.8
    assert cal.threshold >= np.median(cal.global_scores) * math.exp(cal.prior["global"]["view_shift"])
    assert (others > cal.threshold).mean() < (others > old_rule).mean()

"""NormalBank: faiss search, coreset bound, calibration from good images, save/load."""

import doctest

import numpy as np
import pytest

import iad_agent.vision.normal_bank as nb_module
from iad_agent.vision.features import FeatureConfig, FeatureExtractor
from iad_agent.vision.normal_bank import NormalBank, aligned_distance, greedy_coreset, image_score, threshold_for_fpr


def test_doctests():
    assert doctest.testmod(nb_module).failed == 0


def test_threshold_for_fpr_quantile_and_small_sample():
    scores = np.arange(100.0)
    assert threshold_for_fpr(scores, 0.05) == 95.0
    small = threshold_for_fpr([1.0, 2.0, 3.0], 0.05)
    assert small > 3.0  # extrapolated beyond the max of few scores
    with pytest.raises(ValueError):
        threshold_for_fpr([], 0.05)


def test_greedy_coreset_covers_clusters():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16)) * 50
    pts = np.concatenate([c + rng.normal(size=(200, 16)) for c in centres]).astype(np.float32)
    keep = greedy_coreset(pts, 5, proj_dim=16)
    assert len(set((keep // 200).tolist())) == 5  # one point from every cluster


def test_aligned_distance_notices_a_shifted_part():
    grid = np.zeros((8, 8, 4), np.float32)
    grid[2, 2] = 10
    moved = np.zeros_like(grid)
    moved[6, 6] = 10
    assert aligned_distance(grid, grid).max() == 0
    assert aligned_distance(moved, grid).max() > 5


@pytest.fixture(scope="module")
def grids(data_root):
    from iad_agent.imageio import load_image

    paths = sorted((data_root / "mvtec_ad/hazelnut/train/good").glob("*.png"))[:6]
    extractor = FeatureExtractor(FeatureConfig())
    return extractor([load_image(p) for p in paths]), [str(p) for p in paths]


def test_save_load_gives_identical_scores(grids, tmp_path):
    feats, paths = grids
    bank = NormalBank(FeatureConfig())
    bank.add(feats[:5], paths[:5])
    bank.calibrate(0.05)
    bank.save(tmp_path / "bank")
    loaded = NormalBank.load(tmp_path / "bank")
    a, b = bank.patch_distances(feats[5]), loaded.patch_distances(feats[5])
    np.testing.assert_array_equal(a, b)
    assert loaded.calibration.threshold == bank.calibration.threshold
    assert loaded.nearest(feats[5], 2) == bank.nearest(feats[5], 2)


def test_coreset_bounds_memory_and_incremental_add(grids):
    feats, paths = grids
    bank = NormalBank(FeatureConfig(), max_patches=1500)
    bank.add(feats[:3], paths[:3])
    assert bank.memory.shape[0] == 1500
    bank.add(feats[3:5], paths[3:5])
    assert bank.memory.shape[0] == 1500 and len(bank) == 5
    assert set(np.unique(bank.origin)) <= set(range(5)) and 4 in bank.origin
    # a registered image scores ~0 against a full bank, a held-out one does not
    full = NormalBank(FeatureConfig())
    full.add(feats[:5], paths[:5])
    assert image_score(full.patch_distances(feats[0])) < 0.2  # float16 storage rounding only
    assert image_score(full.patch_distances(feats[5])) > 10.0


def test_leave_one_out_calibration(grids):
    feats, paths = grids
    bank = NormalBank(FeatureConfig())
    bank.add(feats, paths)
    cal = bank.calibrate(0.05)
    assert cal.method == "leave-one-out" and len(cal.global_scores) == 6
    assert all(s > 1.0 for s in cal.global_scores)  # own patches excluded
    assert cal.threshold >= max(cal.global_scores) * 0.9
    with pytest.raises(RuntimeError, match="empty"):
        NormalBank().calibrate()

"""Issue 11 components on real images: aspect-kept features, self-similarity, batch (mutual)
scoring, synthetic defects, the scoring learned at registration, calibration, ablations."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from PIL import Image

import iad_agent.vision.features as features_module
import iad_agent.vision.scoring as scoring_module
import iad_agent.vision.synthetic as synthetic_module
from iad_agent.vision.features import FeatureConfig, FeatureExtractor, clip_lengths
from iad_agent.vision.normal_bank import NormalBank, image_score
from iad_agent.vision.similarity import mutual_scores, self_similarity_map
from iad_agent.vision.scoring import Scoring, choose_scoring
from iad_agent.vision.synthetic import noise_patch, synthetic_defects


def test_doctests():
    for module in (features_module, scoring_module, synthetic_module):
        assert doctest.testmod(module).failed == 0, module.__name__


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor(FeatureConfig())


@pytest.fixture(scope="module")
def grid_images(data_root):
    from iad_agent.imageio import load_image

    paths = sorted((data_root / "mvtec_ad/grid/train/good").glob("*.png"))[:3]
    return [load_image(p) for p in paths]


def test_aspect_ratio_is_kept(data_root, extractor):
    from iad_agent.imageio import load_image

    img = load_image(next((data_root / "mvtec_loco/juice_bottle/train/good").glob("*.png")))  # 800 x 1600 (w x h)
    grid = extractor([img])[0]
    assert grid.shape[:2] == (64, 32)  # rows follow the long side: nothing squashed
    square = FeatureExtractor(FeatureConfig(keep_aspect=False))([img])[0]
    assert square.shape[:2] == (32, 32)


def test_mixed_shapes_share_a_bank(data_root, extractor, tmp_path):
    from iad_agent.imageio import load_image

    free = sorted((data_root / "magnetic_tile/MT_Free/Imgs").glob("*.jpg"))[:6]
    imgs = [load_image(p) for p in free]
    grids = extractor(imgs)
    assert isinstance(grids, list) and len({g.shape for g in grids}) > 1
    bank = NormalBank(extractor.config)
    bank.add(grids[:5], [str(p) for p in free[:5]])
    bank.calibrate(0.05)
    bank.save(tmp_path / "bank")
    loaded = NormalBank.load(tmp_path / "bank")
    assert [g.shape for g in loaded.grids] == [g.shape for g in bank.grids]
    np.testing.assert_array_equal(bank.patch_distances(grids[5]), loaded.patch_distances(grids[5]))
    score, dmap, _ = loaded.aligned_score(grids[5].astype(np.float32))  # another shape: resampled, not refused
    assert dmap.shape == grids[5].shape[:2] and np.isfinite(score)


def test_self_similarity_finds_a_defect_on_a_texture(grid_images, extractor):
    good = grid_images[0]
    bad, mask = noise_patch(good, np.random.default_rng(3))
    good_map = self_similarity_map(extractor([good])[0])
    bad_map = self_similarity_map(extractor([bad])[0])
    assert image_score(bad_map) > image_score(good_map)
    peak = np.unravel_index(int(np.argmax(bad_map)), bad_map.shape)
    rows, cols = np.nonzero(mask)
    py, px = (peak[0] + 0.5) / bad_map.shape[0], (peak[1] + 0.5) / bad_map.shape[1]
    dist = np.min(np.hypot(rows / mask.shape[0] - py, cols / mask.shape[1] - px))
    assert dist < 0.08  # the hottest patch lies on (or next to) the scratch


@pytest.mark.parametrize("category,defect", [("transistor", "damaged_case"), ("bottle", "broken_large")])
def test_mutual_scores_single_out_the_defective_image(data_root, extractor, category, defect):
    from iad_agent.imageio import load_image

    goods = sorted((data_root / f"mvtec_ad/{category}/train/good").glob("*.png"))[:5]
    bad = sorted((data_root / f"mvtec_ad/{category}/test/{defect}").glob("*.png"))[0]
    maps = mutual_scores(list(extractor([load_image(p) for p in [*goods, bad]])))  # no good image is known
    scores = [image_score(m) for m in maps]
    assert int(np.argmax(scores)) == len(goods)
    with pytest.raises(ValueError):
        mutual_scores([np.zeros((4, 4, 2), np.float32)])


def test_synthetic_defect_scores_above_its_good_image(hazelnut_product, data_root):
    from iad_agent.inspector import Inspector
    from iad_agent.policies.knn import KnnPolicy

    good = Image.open(data_root / "mvtec_ad/hazelnut/test/good/000.png").convert("RGB")
    inspector = Inspector(hazelnut_product, KnnPolicy(), tools={})
    base = inspector.inspect(good).trajectory.answer.score
    for img, mask, kind in synthetic_defects([good], 4, seed=0):
        assert mask.any()
        assert inspector.inspect(img).trajectory.answer.score > base, kind


def _whole_image_defect(kind: str, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """The noise patch, scratch and blur patch computed over the whole image, as they were before they read
    only the defect's neighbourhood: the reference the local computation must reproduce exactly."""
    from PIL import ImageFilter
    from scipy.ndimage import gaussian_filter

    from iad_agent.vision.synthetic import _blob_mask, _scratch_mask

    img = img.convert("RGB")
    w, h = img.size
    arr = np.asarray(img, np.float32)
    if kind == "noise_patch":
        mask = _blob_mask(w, h, rng)
        source = np.asarray(img.transpose(Image.Transpose.ROTATE_180).filter(ImageFilter.GaussianBlur(rng.uniform(0, 2))), np.float32)
        source = source[::-1] if rng.random() < 0.5 else source
        source = np.clip(source * rng.uniform(0.5, 1.5) + rng.uniform(-60, 60, 3), 0, 255)
        beta = rng.uniform(0.0, 0.6)
        return np.where(mask[..., None], beta * arr + (1 - beta) * source, arr).astype(np.uint8)
    if kind == "scratch":
        mask = _scratch_mask(w, h, rng)  # the curve itself; the blend below is what must match
        value = rng.uniform(0, 0.25) * 255 if float(arr.mean()) > 100 or rng.random() < 0.5 else rng.uniform(0.75, 1.0) * 255
        alpha = gaussian_filter(mask.astype(np.float32), 0.7)[..., None] * rng.uniform(0.6, 1.0)
        return np.clip(arr * (1 - alpha) + value * alpha, 0, 255).astype(np.uint8)
    lum = arr.mean(axis=2)
    mask = max((_blob_mask(w, h, rng, (0.01, 0.05)) for _ in range(4)), key=lambda m: float(lum[m].std()))
    blurred = np.asarray(img.filter(ImageFilter.GaussianBlur(max(2.0, 0.01 * max(w, h)))), np.float32)
    blurred = np.clip(blurred * rng.uniform(0.6, 1.4), 0, 255)
    soft = gaussian_filter(mask.astype(np.float32), 1.5)[..., None]
    return (arr * (1 - soft) + blurred * soft).astype(np.uint8)


def test_synthetic_defects_read_only_their_neighbourhood_and_match_the_whole_image_computation(data_root):
    """Registration makes 16 synthetic defects; on a 12-megapixel photo, blurring and turning the whole image
    for each took 21 of a 4-image registration's 26 s. Each maker now reads the defect's neighbourhood only,
    and gives exactly the image the whole-image computation gave (same random draws)."""
    from iad_agent.vision.synthetic import blur_patch, scratch

    makers = {"noise_patch": noise_patch, "scratch": scratch, "blur_patch": blur_patch}
    photos = [Image.open(data_root / "mvtec_ad/hazelnut/train/good/000.png"),
              Image.open(data_root / "mvtec_loco/juice_bottle/train/good/000.png"),
              Image.open(data_root / "mvtec_ad/grid/train/good/000.png").convert("RGB").resize((4000, 3000))]
    for i, photo in enumerate(photos):
        for kind, make in makers.items():
            for seed in range(6 if i < 2 else 1):
                local, mask = make(photo, np.random.default_rng(seed))
                whole = _whole_image_defect(kind, photo, np.random.default_rng(seed))
                assert local.size == photo.size and mask.shape == whole.shape[:2] and mask.any()
                assert np.array_equal(np.asarray(local), whole), (kind, photo.size, seed)


def test_choose_scoring_follows_the_separating_evidence():
    rng = np.random.default_rng(0)
    flat = [rng.uniform(0.9, 1.1, (8, 8)) for _ in range(6)]
    spiky = [m.copy() for m in flat]
    for m in spiky:
        m[3, 3] = 3.0
    # self-similarity separates, nearest neighbour does not: the weight goes to self-similarity
    s = choose_scoring(flat, flat, flat, spiky)
    assert s.self_weight > 0 and s.synthetic_auroc["0.0"] <= 0.6
    # nearest neighbour separates: plain knn (ties go to the smaller weight) ...
    s = choose_scoring(flat, flat, spiky, flat)
    assert s.self_weight == 0.0
    # ... but registration's candidates start at ¼: its look always keeps some self-similarity
    from iad_agent.vision.learn import MIN_SELF_WEIGHT, SELF_WEIGHTS

    assert min(SELF_WEIGHTS) == MIN_SELF_WEIGHT > 0
    assert choose_scoring(flat, flat, spiky, flat, weights=SELF_WEIGHTS).self_weight == MIN_SELF_WEIGHT
    assert Scoring.from_dict(s.to_dict()) == s
    # both separate equally: the smaller weight, or the larger one with a single good image
    assert choose_scoring(flat, flat, spiky, spiky).self_weight == 0.0
    assert choose_scoring(flat, flat, spiky, spiky, ties_to_larger=True).self_weight == 1.0
    # with ties to the larger weight, a weight that separates worse is still not taken
    s = choose_scoring(flat, flat, spiky, flat, ties_to_larger=True)
    assert s.self_weight < 1.0 and s.synthetic_auroc[str(s.self_weight)] > s.synthetic_auroc["1.0"]


def test_one_image_threshold_shift_is_capped_by_synthetic_defects():
    from iad_agent.vision.normal_bank import Calibration

    cal = Calibration(0.05, "augmented-views", [1.0], [1.0])
    assert cal.shifted(1.0) == 1.0  # no shift stored (leave-one-out, or an older product)
    cal.views_shift, cal.synthetic_median = 1.2, 1.5
    assert cal.shifted(1.0) == pytest.approx(1.2)  # the full shift below the synthetic median
    cal.synthetic_median = 1.1
    assert cal.shifted(1.0) == pytest.approx(1.1)  # capped at the synthetic median
    cal.synthetic_median = 0.9
    assert cal.shifted(1.0) == 1.0  # never below the views' own threshold


def test_one_image_threshold_is_tied_to_the_synthetic_median_at_five_percent():
    from iad_agent.vision.normal_bank import Calibration, threshold_for_fpr

    views = [0.8, 0.85, 0.9, 0.82, 0.88, 0.79, 0.84, 0.86]
    cal = Calibration(0.05, "augmented-views", views, [1.0], synthetic_median=1.2, synthetic_level=1.05)
    assert cal.threshold == pytest.approx(1.26)  # 1.05 x the synthetic median, whatever the views say
    # another promised rate moves it as the views' normal fit moves
    ratio = threshold_for_fpr(views, 0.01) / threshold_for_fpr(views, 0.05)
    assert cal.threshold_at(0.01) == pytest.approx(1.26 * ratio) and ratio > 1
    old = Calibration(0.05, "augmented-views", views, [1.0], synthetic_median=1.2, views_shift=1.18)
    assert old.threshold == pytest.approx(min(threshold_for_fpr(views, 0.05) * 1.18, 1.2))  # stored before: unchanged


def test_one_image_threshold_reads_the_split_score_beside_the_synthetic_median():
    from iad_agent.vision.normal_bank import Calibration, threshold_for_fpr

    views = [0.8, 0.85, 0.9, 0.82, 0.88, 0.79, 0.84, 0.86]
    cal = Calibration(0.05, "augmented-views", views, [1.0], synthetic_median=1.44, synthetic_level=1.02, split_score=1.0)
    assert cal.threshold == pytest.approx(1.02 * 1.2)  # 1.02 x the geometric mean of the two levels
    ratio = threshold_for_fpr(views, 0.01) / threshold_for_fpr(views, 0.05)
    assert cal.threshold_at(0.01) == pytest.approx(1.02 * 1.2 * ratio)  # other rates follow the views' fit
    cal.split_score = 0.0  # an image too small to cut, or a product stored before the split score existed
    assert cal.threshold == pytest.approx(1.02 * 1.44)


@pytest.mark.slow
def test_split_score_sits_below_the_synthetic_defects_on_a_texture_and_above_them_on_an_object(data_root):
    """One good image cut in two: on a regular texture (grid) one half is an honest stand-in for another good part,
    so the split score lies below the synthetic defects' median; on a centred object (bottle) the other half is a
    poor match and it lies above. The threshold at 5 % is SPLIT_LEVEL x their geometric mean."""
    from iad_agent.product import Product, list_images
    from iad_agent.vision.learn import SPLIT_LEVEL, split_score

    levels = {}
    for name in ("grid", "bottle"):
        one = Product.build(name, list_images(data_root / f"mvtec_ad/{name}/train/good")[:1])
        cal = one.bank.calibration
        assert cal.synthetic_level == SPLIT_LEVEL and cal.split_score > 0 and cal.synthetic_median > 0
        assert cal.threshold == pytest.approx(SPLIT_LEVEL * np.sqrt(cal.split_score * cal.synthetic_median))
        levels[name] = cal.split_score / cal.synthetic_median
    assert levels["grid"] < 1 < levels["bottle"]
    tiny = np.zeros((3, 8, 4), np.float32)  # under 4 patches a side: not cut, the synthetic median alone
    assert split_score(one.bank, tiny, None, one.bank.scoring) == 0.0


def test_few_good_images_set_the_threshold_from_their_mean_and_the_prior_spread():
    from statistics import NormalDist

    from iad_agent.vision.normal_bank import Calibration

    z = NormalDist().inv_cdf(0.95)
    # four held-out scores, two far from the other two (juice bottle, 4 shots): the fitted normal
    # distribution's threshold follows their spread; the prior spread's stays near the mean
    cal = Calibration(0.05, "leave-one-out", [0.73, 1.18, 1.18, 0.82], [1.0], bank_size_factor=0.9)
    fitted = cal.threshold
    assert fitted == pytest.approx((0.9775 + z * float(np.std([0.73, 1.18, 1.18, 0.82], ddof=1))) * 0.9)
    cal.prior_spread = 0.05
    assert cal.threshold == pytest.approx(0.9775 * (1 + z * 0.05))  # no bank-size factor either
    assert cal.threshold < fitted
    assert cal.threshold_at(0.01) > cal.threshold > cal.threshold_at(0.2)  # the promise still sets it
    cal.knn_scores, cal.knn_bank_size_factor = [2.0, 2.2], 0.8
    assert cal.knn_threshold == pytest.approx(2.1 * (1 + z * 0.05))


@pytest.fixture(scope="module")
def grid3(data_root, tmp_path_factory):
    """grid registered from 3 full-resolution good images (with its progress calls), built and saved once:
    ``(product, progress calls, saved folder)``. Tests that change a product load their own from the folder."""
    from iad_agent.product import Product, list_images

    normals = list_images(data_root / "mvtec_ad/grid/train/good")[:3]
    calls = []
    product = Product.build("grid3", normals, progress=lambda done, total: calls.append((done, total)))
    folder = tmp_path_factory.mktemp("grid3") / "grid3"
    product.save(folder)
    return product, calls, folder


def test_registration_learns_and_saves_the_scoring(data_root, grid3):
    from iad_agent.product import Product, list_images

    product, calls, folder = grid3
    assert calls and calls[-1][0] == calls[-1][1]  # the progress bar reaches its end
    cal = product.bank.calibration
    assert len(cal.global_scores) == 3 and len(cal.knn_scores) == 3
    assert cal.prior_spread == 0.05  # three good images: too few to measure how good scores spread
    assert cal.threshold == pytest.approx(np.mean(cal.global_scores) * (1 + 1.6449 * 0.05), rel=1e-4)
    # the look always keeps some self-similarity: the candidates start at ¼ (learn.MIN_SELF_WEIGHT)
    assert set(product.bank.scoring.synthetic_auroc) == {"0.25", "0.5", "0.75", "1.0"}
    assert product.bank.scoring.self_weight >= 0.25
    loaded = Product.load(folder)
    assert loaded.bank.scoring == product.bank.scoring  # learned once, never recomputed at load
    assert loaded.bank.calibration.threshold == cal.threshold
    plain = Product.build("hazelplain", list_images(data_root / "mvtec_ad/hazelnut/train/good")[:2], selfsim=False)
    assert plain.bank.scoring.self_weight == 0.0 and set(plain.bank.scoring.synthetic_auroc) == {"0.0"}


def test_one_good_image_reads_a_smoothed_nearest_neighbour_term(data_root, grid3):
    """With one good image the look's nearest-neighbour term is averaged over 3×3 patches
    (``Scoring.knn_smooth``); with several it is not, and products stored before keep the plain term."""
    from iad_agent.inspector import Inspector
    from iad_agent.policies.knn import KnnPolicy
    from iad_agent.product import Product, list_images
    from iad_agent.vision.learn import ONE_IMAGE_KNN_SMOOTH
    from iad_agent.vision.similarity import self_similarity_map

    spike = np.zeros((5, 5), np.float32)
    spike[2, 2] = 9.0
    smoothed = Scoring(knn_smooth=3).knn_term(spike)
    assert smoothed[2, 2] == pytest.approx(1.0) and smoothed[1, 1] == pytest.approx(1.0) and smoothed[0, 0] == 0.0
    assert Scoring().knn_term(spike).max() == 9.0  # one good image or not: the plain term otherwise
    stored = grid3[0].bank.scoring.to_dict()
    del stored["knn_smooth"]  # a product saved before the field existed
    assert Scoring.from_dict(stored).knn_smooth == 1 and grid3[0].bank.scoring.knn_smooth == 1  # three good images

    one = Product.build("nut1", list_images(data_root / "mvtec_ad/hazelnut/train/good")[:1])
    s = one.bank.scoring
    assert s.knn_smooth == ONE_IMAGE_KNN_SMOOTH == 3 and s.uses_self
    result = Inspector(one, KnnPolicy(), tools={}).inspect(data_root / "mvtec_ad/hazelnut/test/crack/000.png")
    episode = result.episode
    knn = one.bank.patch_distances(np.asarray(episode.grid, np.float32))
    self_map = self_similarity_map(episode.prepared.self_grid)
    assert np.allclose(episode.look.patch_map, s.fuse(knn, self_map), atol=1e-5)
    plain = Scoring(s.self_weight, s.knn_level, s.self_level, self_raw=s.self_raw)
    assert not np.allclose(episode.look.patch_map, plain.fuse(knn, self_map), atol=1e-3)
    assert np.allclose(episode.look.plain.patch_map, knn)  # the knn baseline keeps the plain map


def test_self_similarity_reads_the_unsmoothed_grid_and_stored_products_keep_the_smoothed_one(data_root, grid3, extractor):
    """The self term of a new product reads the grid before the 3×3 smoothing (``Scoring.self_raw``);
    the nearest-neighbour search keeps the smoothed grid, and a product stored before keeps its self
    term on the smoothed grid (its levels were measured there)."""
    from iad_agent.episode import PreparedQuery
    from iad_agent.imageio import load_image
    from iad_agent.product import Product

    image = load_image(sorted((data_root / "mvtec_ad/grid/test/bent").glob("*.png"))[0])
    smoothed, raw = extractor.with_raw([image])
    assert np.allclose(smoothed[0], extractor([image])[0], rtol=1e-4, atol=1e-4)  # one pass gives both
    assert raw[0].shape == smoothed[0].shape and not np.allclose(raw[0], smoothed[0], atol=1e-3)
    flat_smoothed, flat_raw = FeatureExtractor(FeatureConfig(smooth=1), backbone=extractor.backbone).with_raw([image])
    assert flat_smoothed[0] is flat_raw[0]  # no smoothing (e.g. ViT patches): one grid serves both terms

    product = grid3[0]
    assert product.bank.scoring.uses_self and product.bank.scoring.self_raw  # grid: self-similarity chosen
    query = PreparedQuery(product, image)
    capped = clip_lengths(smoothed[0], product.bank.config.clip_length)  # the product caps the smoothed grid only
    assert np.allclose(query.grid, capped, rtol=1e-4, atol=1e-4) and np.allclose(query.self_grid, raw[0], rtol=1e-4, atol=1e-4)
    expected = product.bank.scoring.fuse(product.bank.patch_distances(query.grid), self_similarity_map(raw[0]))
    assert np.allclose(query.look.patch_map, expected, rtol=1e-3, atol=1e-3)

    stored = Product.load(grid3[2])  # as a product saved before the flag existed
    stored.bank.scoring = Scoring.from_dict({k: v for k, v in stored.bank.scoring.to_dict().items() if k != "self_raw"})
    assert not stored.bank.scoring.self_raw
    old = PreparedQuery(stored, image)
    assert old.self_grid is old.grid
    assert np.allclose(old.look.patch_map, stored.bank.scoring.fuse(stored.bank.patch_distances(old.grid), self_similarity_map(old.grid)),
                       rtol=1e-3, atol=1e-3)


def test_knn_and_no_selfsim_answer_from_the_plain_look(data_root, grid3):
    from iad_agent.policies import PolicyConfigError, resolve_policy
    from iad_agent.inspector import Inspector
    from iad_agent.product import Product

    product = Product.load(grid3[2])  # its own copy of the module's grid product: the scoring is changed below
    product.bank.scoring = Scoring(0.5, product.bank.scoring.knn_level, product.bank.scoring.self_level)
    query = sorted((data_root / "mvtec_ad/grid/test/bent").glob("*.png"))[0]
    knn = resolve_policy("knn").policy
    ablation = resolve_policy("embedded-no-selfsim")
    assert ablation.policy.name == ablation.label == "embedded-no-selfsim" and "perceptive_zoomer" in ablation.tools
    r_knn = Inspector(product, knn, tools={}).inspect(query)
    look = r_knn.episode.look
    assert look.knn is not None  # the product's look mixes in self-similarity ...
    assert r_knn.trajectory.answer.score == pytest.approx(look.plain.score)  # ... knn stays plain
    assert r_knn.trajectory.answer.threshold == pytest.approx(product.bank.calibration.knn_threshold)
    with pytest.raises((ValueError, PolicyConfigError)):
        resolve_policy("embedded-no-nonsense")


def test_a_huge_photo_gives_the_verdict_of_its_downsized_copy(hazelnut_inspector, data_root):
    """A 4000×3000-class photo is seen at the product's scale (long side capped): same verdict, bounded work."""
    path = data_root / "mvtec_ad/hazelnut/test/crack/000.png"
    small = Image.open(path).convert("RGB")
    big = small.resize((3072, 3072), Image.Resampling.BICUBIC)
    a = hazelnut_inspector.inspect(small).trajectory.answer
    b = hazelnut_inspector.inspect(big).trajectory.answer
    assert a.anomaly_present and b.anomaly_present
    assert b.score == pytest.approx(a.score, rel=0.15)


# ------------------------------------------------------------------ brightness matching (issue 11)


def test_brightness_is_matched_only_where_the_good_images_light_varies(data_root):
    import iad_agent.vision.brightness as brightness_module
    from iad_agent.imageio import load_image
    from iad_agent.vision.brightness import brightness_target, luminance_stats

    assert doctest.testmod(brightness_module).failed == 0
    hazelnut = [load_image(p) for p in sorted((data_root / "mvtec_ad/hazelnut/train/good").glob("*.png"))[:4]]
    tiles = [load_image(p) for p in sorted((data_root / "magnetic_tile/MT_Free/Imgs").glob("*.jpg"))[:4]]
    assert brightness_target(hazelnut) is None  # one light for every good hazelnut: left as it is
    assert brightness_target(tiles[:1]) is None  # one good image cannot show how the light varies
    target = brightness_target(tiles)
    means = [luminance_stats(im)[0] for im in tiles]
    assert target is not None and min(means) <= target[0] <= max(means)
    # the extractor sees a tile shot darker as the tile itself (up to the clipping of bright pixels)
    config = FeatureConfig(brightness=target)
    dark = Image.eval(tiles[0], lambda v: int(v * 0.6))
    matched = FeatureExtractor(config)([tiles[0], dark])
    plain = FeatureExtractor(FeatureConfig())([tiles[0], dark])
    assert np.abs(matched[0] - matched[1]).mean() < 0.25 * np.abs(plain[0] - plain[1]).mean()
    assert FeatureConfig.from_dict(config.to_dict()) == config
    assert "brightness" not in FeatureConfig().to_dict()  # products without it are stored as before
    # a tool's crop moves with its whole image (crop_of), not by its own statistics
    from iad_agent.vision.brightness import crop_of

    ext = FeatureExtractor(config)
    whole = ext._to_array([dark], dark.size)[0]
    box = (10, 20, 74, 84)
    region = crop_of(dark, dark.crop(box))
    assert np.allclose(ext._to_array([region], region.size)[0], whole[20:84, 10:74], atol=1e-5)
    assert not np.allclose(ext._to_array([dark.crop(box)], (64, 64))[0], whole[20:84, 10:74], atol=1e-2)


def test_a_matched_product_sees_a_darker_good_tile_as_good_and_a_defect_as_a_defect(data_root, tmp_path):
    from iad_agent.inspector import Inspector
    from iad_agent.product import Product

    free = sorted((data_root / "magnetic_tile/MT_Free/Imgs").glob("*.jpg"))
    normals = free[:4]
    # both without the length cap, which also damps a change of light: the brightness matching alone is compared
    matched = Product.build("tile", normals, allow_mixed_sizes=True, clip=False)
    kept = Product.build("tile", normals, allow_mixed_sizes=True, brightness=False, clip=False)
    assert matched.bank.config.brightness is not None and kept.bank.config.brightness is None
    matched.save(tmp_path / "tile")
    assert Product.load(tmp_path / "tile").bank.config == matched.bank.config  # saved with the product
    img = Image.open(free[20]).convert("RGB")
    dark = Image.eval(img, lambda v: int(v * 0.55))
    ratio = {name: Inspector(p).inspect(dark).episode.look.ratio for name, p in (("matched", matched), ("kept", kept))}
    assert ratio["matched"] < ratio["kept"]  # a change of light is no longer read as a defect
    blowhole = sorted((data_root / "magnetic_tile/MT_Blowhole/Imgs").glob("*.jpg"))[0]
    look = Inspector(matched).inspect(blowhole).episode.look
    assert look.ratio > Inspector(matched).inspect(img).episode.look.ratio  # a defect stays


def test_no_brightness_ablation_is_registered_by_eval_only(data_root, tmp_path):
    import dataclasses

    from iad_agent.eval import plan
    from iad_agent.eval.runner import evaluate_group
    from iad_agent.policies import PolicyConfigError, resolve_policy

    with pytest.raises(PolicyConfigError, match="iad eval"):
        resolve_policy("embedded-no-brightness")
    with pytest.raises(PolicyConfigError, match="only the embedded policy"):
        resolve_policy("knn-no-brightness", registering=True)
    resolved = resolve_policy("embedded-no-brightness", registering=True)
    assert resolved.registration == (("brightness", False),) and resolved.label == "embedded-no-brightness"
    assert "perceptive_zoomer" in resolved.tools
    assert resolve_policy("embedded-no-clip", registering=True).registration == (("clip", False),)
    with pytest.raises(PolicyConfigError, match="clip=False"):
        resolve_policy("embedded-no-clip")
    config = plan.EvalConfig(datasets=[("magnetic_tile", data_root / "magnetic_tile")], shots=[2], seeds=1,
                             policies=["embedded", "embedded-no-brightness"], max_test=3, examples=False)
    (group,) = plan.plan(config)
    records = {r["policy"]: r for r in evaluate_group(group, config, tmp_path)}
    scores = {name: [s["score"] for s in r["samples"]] for name, r in records.items()}
    assert scores["embedded"] != scores["embedded-no-brightness"]  # each on its own product (features, tool cache)
    (only,) = evaluate_group(dataclasses.replace(group, policies=["embedded"]), config, tmp_path)
    assert [s["score"] for s in only["samples"]] == scores["embedded"]
    # a product under stable light is not matched: the ablation shares it (one registration, one feature pass)
    stable = plan.EvalConfig(datasets=[("mvtec", data_root / "mvtec_ad")], categories=["hazelnut"], shots=[2], seeds=1,
                             policies=["embedded", "embedded-no-brightness"], max_test=2, examples=False)
    (group,) = plan.plan(stable)
    records = evaluate_group(group, stable, tmp_path)
    assert [s["score"] for s in records[0]["samples"]] == [s["score"] for s in records[1]["samples"]]
    assert records[0]["build_ms"] == records[1]["build_ms"]


# ------------------------------------------------------------------ the patch vectors' length capped (issue 11)


def test_registration_caps_the_patch_lengths_and_saves_the_cap(data_root, grid3, tmp_path):
    """A new product caps its smoothed patch vectors at the 75th percentile of its good images'
    patch lengths (direction kept); the cap is saved with it and applied to every later grid."""
    from iad_agent.product import Product
    from iad_agent.vision.features import CLIP_QUANTILE, clip_length_of

    product, _, folder = grid3
    length = product.bank.config.clip_length
    assert length > 0 and CLIP_QUANTILE == 0.75
    assert Product.load(folder).bank.config == product.bank.config  # saved with the product
    uncapped = Product.build("grid3", product.bank.paths, clip=False)
    assert uncapped.bank.config.clip_length == 0 and "clip_length" not in uncapped.bank.config.to_dict()
    plain = [np.asarray(g, np.float32) for g in uncapped.bank.grids]
    assert length == pytest.approx(clip_length_of(plain), rel=2e-3)  # from the good grids (stored as float16)
    lengths = np.concatenate([np.linalg.norm(np.asarray(g, np.float32), axis=-1).ravel() for g in product.bank.grids])
    assert lengths.max() <= length * 1.002  # every stored patch within the cap ...
    assert np.mean(lengths >= length * 0.998) == pytest.approx(1 - CLIP_QUANTILE, abs=0.15)  # ... about a quarter on it, over all good images
    # a query is capped as the bank is; the direction of a capped patch is kept
    from iad_agent.imageio import load_image

    image = load_image(sorted((data_root / "mvtec_ad/grid/test/bent").glob("*.png"))[0])
    capped, raw = product.extractor([image])[0], uncapped.extractor([image])[0]
    assert np.linalg.norm(capped, axis=-1).max() <= length * 1.0001
    cos = np.einsum("hwc,hwc->hw", capped, raw) / (np.linalg.norm(capped, axis=-1) * np.linalg.norm(raw, axis=-1))
    assert cos.min() > 0.9999
    with pytest.raises(ValueError, match="clip_length"):
        FeatureConfig(clip_length=-1.0)
    # an existing product keeps its cap when images are added (its stored grids were capped with it)
    grown = Product.build("grid3", list(sorted((data_root / "mvtec_ad/grid/train/good").glob("*.png")))[3:4], existing=product)
    assert grown.bank.config.clip_length == length


def test_feature_memo_runs_the_network_once_per_input_and_changes_nothing(data_root, tmp_path, monkeypatch):
    """Inside ``feature_memo`` a second extractor that differs only after the network (no cap,
    no smoothing) reuses the backbone output, with the same grids as without the memo; a stored
    map cannot be changed by a caller, and the memo stays within its bound. The benchmark's
    group with the ``embedded-no-clip`` ablation scores every image as two separate runs would,
    and still charges the ablation its own registration time."""
    import dataclasses

    from iad_agent.eval import plan
    from iad_agent.eval.runner import evaluate_group
    from iad_agent.imageio import load_image
    from iad_agent.vision.features import feature_memo

    images = [load_image(p) for p in sorted((data_root / "mvtec_ad/grid/test/bent").glob("*.png"))[:2]]
    capped_cfg = FeatureConfig(clip_length=2.0)
    plain, capped = FeatureExtractor(), FeatureExtractor(capped_cfg)
    expected = [np.asarray(plain(images)), np.asarray(capped(images))]
    with feature_memo(64) as memo:
        first = np.asarray(plain(images))
        first += 1.0  # a caller writing into its grids leaves the memo's copy alone
        second = np.asarray(capped(images))
        again = np.asarray(plain(images))
        assert memo.misses == 2 and memo.hits == 4 and memo.replayed()[0] > 0
        assert 0 < memo.bytes <= 64 * 2**20
    np.testing.assert_allclose(second, expected[1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(again, expected[0], rtol=1e-5, atol=1e-5)
    with feature_memo(0.001) as tiny:  # nothing fits: every call runs the network
        plain(images[:1]), plain(images[:1])
        assert tiny.hits == 0 and tiny.bytes == 0

    config = plan.EvalConfig(datasets=[("mvtec", data_root / "mvtec_ad")], categories=["grid"], shots=[1], seeds=1,
                             policies=["embedded", "embedded-no-clip"], max_test=3, examples=False)
    (group,) = plan.plan(config)
    both = {r["policy"]: r for r in evaluate_group(group, config, tmp_path)}
    for name in ("embedded", "embedded-no-clip"):
        (alone,) = evaluate_group(dataclasses.replace(group, policies=[name]), config, tmp_path)
        assert [s["score"] for s in both[name]["samples"]] == pytest.approx([s["score"] for s in alone["samples"]], rel=1e-4)
    # the ablation reuses the default's network passes and is charged what they cost: with every
    # stored pass priced at 1 s, its registration and each inspection carry seconds they never spent
    from iad_agent.vision.features import FeatureMemo

    put = FeatureMemo.put
    monkeypatch.setattr(FeatureMemo, "put", lambda self, key, value, ms=0.0, cpu_ms=0.0: put(self, key, value, 1000.0, 1000.0))
    priced = {r["policy"]: r for r in evaluate_group(group, config, tmp_path)}
    assert priced["embedded-no-clip"]["build_ms"] > 10_000 > priced["embedded"]["build_ms"]
    assert priced["embedded-no-clip"]["ms_per_image_p50"] > 1000 > priced["embedded"]["ms_per_image_p50"]
    assert priced["embedded-no-clip"]["cpu_ms_per_image_p50"] > 1000

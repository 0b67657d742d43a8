"""Few-shot normal bank augmentation (issue 11 item 2): views, the bank's extra patches, the choice, registration."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
from PIL import Image

import iad_agent.vision.augment as aug_module
from iad_agent.imageio import load_image
from iad_agent.vision.augment import AUGMENTATIONS, CANDIDATES, augment_bank, choose_augmentation, extract_views, view
from iad_agent.vision.features import FeatureConfig, FeatureExtractor
from iad_agent.vision.normal_bank import NormalBank, image_score


def test_doctests():
    assert doctest.testmod(aug_module).failed == 0


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor(FeatureConfig())


@pytest.fixture(scope="module")
def hazelnut(data_root):
    good = sorted((data_root / "mvtec_ad/hazelnut/train/good").glob("*.png"))
    return [load_image(p) for p in good[:2]]


def test_views_are_what_they_say(hazelnut):
    img = hazelnut[0].convert("RGB")
    a = np.asarray(img)
    assert np.array_equal(np.asarray(view(img, "hflip")), a[:, ::-1])
    assert np.array_equal(np.asarray(view(img, "rot180")), a[::-1, ::-1])
    shifted = view(img, "shift-br")
    dx = img.width - shifted.width
    assert 1 <= dx <= 0.05 * img.width and np.array_equal(np.asarray(shifted), a[dx:, dx:])
    assert np.asarray(view(img, "bright+"), np.float32).mean() > a.mean() > np.asarray(view(img, "bright-"), np.float32).mean()
    with pytest.raises(ValueError, match="unknown augmentation view"):
        view(img, "shear")


def test_extra_patches_belong_to_their_image(hazelnut, extractor, tmp_path):
    grids = list(extractor(hazelnut))
    bank = NormalBank()
    bank.add(grids, ["a.png", "b.png"])
    plain_rows = bank.memory.shape[0]
    views = extract_views(hazelnut, extractor, ["flips"])
    bank.set_extra([views[0]["hflip"], None], "flips", {"none": [0.9, 1.0]})
    assert bank.memory.shape[0] == plain_rows + len(views[0]["hflip"])
    assert (bank.origin == 0).sum() == grids[0].shape[0] * grids[0].shape[1] + len(views[0]["hflip"])
    # the mirrored image finds itself in the bank, but not when its image is left out (leave-one-out stays honest)
    mirrored = extractor([view(hazelnut[0], "hflip")])[0]
    near, left_out = image_score(bank.patch_distances(mirrored)), image_score(bank.patch_distances(mirrored, exclude=0))
    assert left_out > 10 * near  # near: float16 rounding only
    bank.save(tmp_path)
    back = NormalBank.load(tmp_path)
    assert back.augmentation == "flips" and back.augment_separation == {"none": [0.9, 1.0]}
    assert np.array_equal(back.origin, bank.origin)
    bank.set_extra([None, None], "none")
    assert bank.memory.shape[0] == plain_rows


def test_choice_reports_every_candidate_and_returns_its_patches(hazelnut, extractor):
    grids = list(extractor(hazelnut))
    choice = choose_augmentation(grids, hazelnut, extractor, n_synthetic=8, candidates=tuple(AUGMENTATIONS))
    assert set(choice.separation) == set(AUGMENTATIONS)
    assert all(0 <= a <= 1 for a, _, _ in choice.separation.values())
    levels = {name: level for name, (_, _, level) in choice.separation.items()}
    assert levels["none"] == 0 and levels["jitter"] < 0.5  # re-lit good parts still look like good parts
    assert choice.name in AUGMENTATIONS and len(choice.extra) == 2
    n_views = len(AUGMENTATIONS[choice.name])
    for g, e in zip(grids, choice.extra):
        assert (e is None) == (n_views == 0)
        if e is not None:  # same-size views (flips, jitter) or slightly smaller crops (shifts)
            assert e.shape[1] == g.shape[-1] and 0.8 * n_views * g.shape[0] * g.shape[1] <= len(e) <= n_views * g.shape[0] * g.shape[1]


def test_synthetic_defect_still_scores_above_good_with_an_augmented_bank(data_root, extractor):
    """Whatever set is chosen, the bank must not learn to call defects normal: the widest set is checked here."""
    from iad_agent.vision.synthetic import synthetic_defects

    good = sorted((data_root / "mvtec_ad/hazelnut/train/good").glob("*.png"))
    refs = [load_image(p) for p in good[:2]]
    held = load_image(good[-1])
    bank = NormalBank()
    bank.add(list(extractor(refs)), ["a", "b"])
    held_grid = extractor([held])[0]
    defects = [(extractor([img])[0], kind) for img, _, kind in synthetic_defects([held], 8, seed=1)]
    plain_good = image_score(bank.patch_distances(held_grid))
    seen = [(g, kind) for g, kind in defects if image_score(bank.patch_distances(g)) > 1.02 * plain_good]
    assert len(seen) >= 4  # the plain bank sees most of them (a faint one may not be)
    views = extract_views(refs, extractor, ["flips+rot90"])
    bank.set_extra(aug_module.extra_patches(views, "flips+rot90"), "flips+rot90")
    good_score = image_score(bank.patch_distances(held_grid))
    assert good_score < plain_good  # more normal neighbours: the good image looks more normal
    for g, kind in seen:  # ... and every defect the plain bank saw still scores above it
        assert image_score(bank.patch_distances(g)) > good_score, kind


def test_registration_chooses_and_can_be_switched_off(data_root, tmp_path):
    from iad_agent.product import Product
    from iad_agent.registration import remove_images

    good = sorted((data_root / "mvtec_ad/hazelnut/train/good").glob("*.png"))
    product = Product.build("hazelnut", good[:2])
    bank = product.bank
    assert set(bank.augment_separation) == {"none", *CANDIDATES} and bank.augmentation in AUGMENTATIONS
    extra = len(AUGMENTATIONS[bank.augmentation]) * sum(g.shape[0] * g.shape[1] for g in bank.grids)
    assert bank.memory.shape[0] >= sum(g.shape[0] * g.shape[1] for g in bank.grids) + 0.8 * extra
    assert product.bank.calibration.threshold > 0
    off = Product.build("hazelnut", good[:2], augment=False)
    assert off.bank.augmentation == "off" and off.bank.augment_separation == {}
    assert off.bank.memory.shape[0] == sum(g.shape[0] * g.shape[1] for g in off.bank.grids)
    # removing an image keeps the switch off (and works from one remaining good image)
    smaller = remove_images(off, [good[0]]).product
    assert smaller.bank.augmentation == "off" and len(smaller.bank) == 1


def test_large_banks_are_not_augmented(hazelnut, extractor):
    bank = NormalBank()
    bank.add(list(extractor(hazelnut)), ["a", "b"])
    assert augment_bank(bank, extractor, lambda i: hazelnut[i], max_references=1) is None
    assert bank.augmentation == "none" and bank.memory.shape[0] == sum(g.shape[0] * g.shape[1] for g in bank.grids)


def test_no_augment_ablation_policy():
    from iad_agent.policies import resolve_policy

    resolved = resolve_policy("embedded-no-augment")
    assert resolved.label == "embedded-no-augment" and resolved.policy.needs_plain_bank
    assert not resolve_policy("embedded").policy.needs_plain_bank
    assert not resolve_policy("embedded-no-selfsim").policy.needs_plain_bank


def test_eval_runs_the_no_augment_ablation_on_its_own_product(data_root, tmp_path):
    from iad_agent.eval.plan import EvalConfig, plan
    from iad_agent.eval.runner import evaluate_group

    config = EvalConfig(datasets=[("mvtec", data_root / "mvtec_ad")], categories=["hazelnut"], shots=[1], seeds=1,
                        policies=["embedded", "embedded-no-augment"], max_test=4, examples=False)
    group = plan(config)[0]
    records = {r["policy"]: r for r in evaluate_group(group, config, tmp_path)}
    assert set(records) == {"embedded", "embedded-no-augment"}
    assert records["embedded-no-augment"]["augmentation"] == "off"
    assert records["embedded"]["augmentation"] in AUGMENTATIONS
    assert all(r["n_test"] == 4 for r in records.values())


def test_pruned_search_gives_the_full_search_scores(hazelnut, extractor, monkeypatch):
    grids = list(extractor(hazelnut))
    views = extract_views(hazelnut, extractor, ["flips+rot90"])
    queries = [(np.asarray(g, np.float32), i) for i, g in enumerate(grids)]
    pruned = aug_module.candidate_scores(queries, grids, views, ["none", "flips+rot90"])
    monkeypatch.setattr(aug_module, "PRUNE", 1.0)
    full = aug_module.candidate_scores(queries, grids, views, ["none", "flips+rot90"])
    assert pruned["none"] == full["none"]
    assert np.allclose(pruned["flips+rot90"], full["flips+rot90"], rtol=1e-6)
    assert all(a < b for a, b in zip(full["flips+rot90"], full["none"]))  # more normal neighbours: lower good scores

"""Tool weights learned at registration from good images and synthetic defects (issue 11, item 3a)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from iad_agent.vision.tool_weights import COMPARE_WEIGHTS, MARGIN, ZOOM_WEIGHTS, Item, choose_weights, final_ratio, read_items

BAND = (0.75, 1.5)


def test_zoom_is_chosen_only_when_its_evidence_separates_synthetic_defects():
    # uncertain goods and defects with the same global ratio: only the zoom tells them apart
    goods = [Item(False, r, zoom=z, compare=1.0) for r, z in [(0.9, 0.7), (1.0, 0.9), (1.1, 0.8), (0.95, 1.0)]]
    defects = [Item(True, r, zoom=z, compare=1.0) for r, z in [(0.9, 2.5), (1.0, 1.8), (1.05, 3.0), (0.95, 2.2)]]
    wz, wc, aurocs = choose_weights(goods + defects, *BAND)
    assert wz > 0 and wc == 0  # the comparison carries no information: not worth calling
    assert aurocs[f"{wz:g},{wc:g}"] == 1.0 and aurocs["0,0"] < 0.7
    # a zoom that reads defects as *more* normal is switched off
    misleading = goods + [Item(True, i.ratio + 0.1, zoom=0.5, compare=1.0) for i in defects]
    assert choose_weights(misleading, *BAND)[:2] == (0.0, 0.0)


def test_ties_go_to_the_cheapest_weights():
    items = [Item(False, 0.5), Item(False, 0.6), Item(True, 2.0), Item(True, 3.0)]  # nothing uncertain: tools never read
    wz, wc, aurocs = choose_weights(items, *BAND)
    assert (wz, wc) == (0.0, 0.0) and set(aurocs.values()) == {1.0}
    assert len(aurocs) == len(ZOOM_WEIGHTS) * len(COMPARE_WEIGHTS) and MARGIN > 0


def test_a_tool_must_win_more_than_one_ordered_pair():
    """Four held-out good images and eight synthetic defects (4 shots): one reordered pair is 1/32 of the AUROC,
    above MARGIN, but noise; a tool is switched on only for two pairs or more."""
    goods = [Item(False, r) for r in (0.8, 0.84, 0.88, 0.92)]  # their ratios are not in doubt: no tool reads them
    sure = [Item(True, 1.3) for _ in range(7)]
    one = Item(True, 0.9, zoom=3.0)  # below one good image's ratio: the zoom lifts it above all four
    wz, _, aurocs = choose_weights(goods + sure + [one], *BAND, compare_weights=(0.0,))
    assert aurocs["0,0"] == pytest.approx(31 / 32, abs=1e-4) and aurocs["0.5,0"] == 1.0 and 1 / 32 > MARGIN
    assert wz == 0.0  # one pair: not worth a zoom
    two = Item(True, 0.86, zoom=3.0)  # below two good images' ratios
    wz, _, aurocs = choose_weights(goods + sure + [two], *BAND, compare_weights=(0.0,))
    assert aurocs["0,0"] == pytest.approx(30 / 32, abs=1e-4) and wz > 0


def test_final_ratio_follows_the_policy_fusion():
    from iad_agent.policies.embedded import fuse, squash

    item = Item(True, 1.2, zoom=3.0, compare=0.5)
    expected = squash(fuse(1.2, [(3.0, 1.0), (0.5, 0.5)]), *BAND)
    assert final_ratio(item, 1.0, 0.5, *BAND) == pytest.approx(expected)
    assert final_ratio(item, 0.0, 0.0, *BAND) == 1.2
    assert final_ratio(Item(False, 0.3), 2.0, 1.0, *BAND) == 0.3  # outside the band no tool is read


def test_registration_learns_the_weights_from_real_good_images(data_root, caplog):
    from iad_agent.product import Product, list_images

    normals = list_images(data_root / "mvtec_ad/hazelnut/train/good")[:40:10]
    with caplog.at_level("INFO", logger="iad_agent.vision.tool_weights"):
        gate = Product.build("nut", normals).gate
    assert gate.weights_from == "synthetic-defects" and "synthetic-defect AUROC" in caplog.text
    assert gate.w_zoom in ZOOM_WEIGHTS and gate.w_compare in COMPARE_WEIGHTS
    assert gate.w_highfreq == 0.0  # not learned: stays switched off


def _grids_and_self_maps(product, images):
    """Feature grids of ``images`` and their self-similarity maps as the product's scoring reads them
    (``None`` where it does not use the self term), as registration's material holds them."""
    from iad_agent.vision.similarity import self_similarity_map

    grids, raw = product.extractor.with_raw(images)
    s = product.bank.scoring
    return list(grids), [self_similarity_map(r if s.self_raw else g) if s.uses_self else None for g, r in zip(grids, raw)]


def test_a_synthetic_defect_reads_higher_than_its_good_image_on_the_zoom(hazelnut_product, data_root):
    """The readings the fit uses, on real images: a pasted patch makes the zoom's evidence rise."""
    from iad_agent.imageio import load_image
    from iad_agent.product import list_images
    from iad_agent.vision.synthetic import DEFECT_MAKERS

    product = hazelnut_product
    good = load_image(list_images(data_root / "mvtec_ad/hazelnut/train/good")[3])  # not among the registered ones
    defect = DEFECT_MAKERS["cutpaste"](good, np.random.default_rng(0))[0]
    grids, selfs = _grids_and_self_maps(product, [good, defect])
    material = {"grids": grids, "exclude": [None, None], "knn": [product.bank.patch_distances(g) for g in grids],
                "self": selfs, "defect": [False, True], "images": [lambda: good, lambda: defect]}
    saved = product.gate.band_low, product.gate.band_high
    product.gate.band_low, product.gate.band_high = 0.0, 1e9  # read the tools whatever the global ratio
    try:
        good_item, defect_item = read_items(product, material)
    finally:
        product.gate.band_low, product.gate.band_high = saved
    assert good_item.zoom is not None and defect_item.zoom is not None
    assert defect_item.zoom > good_item.zoom


def test_products_stored_without_learned_weights_load_with_the_hand_set_ones(hazelnut_product, tmp_path):
    from iad_agent import store
    from iad_agent.product import Product

    folder = tmp_path / "products" / "nut"
    hazelnut_product.save(folder)
    gate_file = store.current(folder) / "gate.json"
    gate = json.loads(gate_file.read_text())
    for key in ("w_zoom", "w_compare", "weights_from"):
        gate.pop(key)
    gate_file.write_text(json.dumps(gate))
    loaded = Product.load(folder)
    assert (loaded.gate.w_zoom, loaded.gate.w_compare, loaded.gate.weights_from) == (1.0, 0.5, "default")


def test_each_held_out_image_is_zoomed_once_for_the_limits_and_the_weights(data_root, monkeypatch):
    """The tool calibration zooms the held-out good images at the policy's box; the weight fit re-uses those readings."""
    import hashlib

    import iad_agent.tools.calibration as calibration
    import iad_agent.tools.zoom as zoom
    from iad_agent.product import Product, list_images
    from iad_agent.vision import tool_weights

    calls: list[list[tuple]] = []
    real = zoom.zoom_evidence_many

    def counting(product, jobs):  # a job is (image, box, references): the same box may be zoomed on another image
        calls.append([(hashlib.sha1(img.tobytes()).hexdigest(), tuple(box.to_list()), tuple(refs)) for img, box, refs in jobs])
        return real(product, jobs)

    monkeypatch.setattr(zoom, "zoom_evidence_many", counting)
    monkeypatch.setattr(calibration, "zoom_evidence_many", counting)
    product = Product.build("nut", list_images(data_root / "mvtec_ad/hazelnut/train/good")[:40:10])
    assert len(calls) in (1, 2)
    assert len(calls[0]) == 4 == len(product.tool_readings["zoom"])  # every held-out good image, once
    assert all(len(refs) == zoom.REFERENCES for *_, refs in calls[0])
    if len(calls) == 2:  # the weight fit zoomed only synthetic defects
        assert len(calls[1]) <= tool_weights.N_SYNTHETIC and not set(calls[1]) & set(calls[0])


def test_the_weight_fit_reads_a_held_out_zoom_from_the_calibration(hazelnut_product, data_root, monkeypatch):
    import iad_agent.tools.zoom as zoom
    from iad_agent.imageio import load_image
    from iad_agent.product import list_images
    from iad_agent.tools.base import evidence_ratio
    from iad_agent.episode import look_box
    from iad_agent.tools.zoom import CONTEXT, MIN_SIZE

    product = hazelnut_product
    good = load_image(list_images(data_root / "mvtec_ad/hazelnut/train/good")[3])
    (grid,), selfs = _grids_and_self_maps(product, [good])
    knn = product.bank.patch_distances(grid)
    refs = [i for i, _ in product.bank.nearest(np.asarray(grid, np.float32), zoom.REFERENCES)]
    scoring = product.bank.scoring  # the region the fit zooms: around the look's hot spot under the product's scoring
    fused = scoring.fuse(knn, selfs[0]) if scoring.uses_self else None
    region = look_box(product.bank.calibration, knn, fused).clamped(MIN_SIZE).expanded(CONTEXT)
    material = {"grids": [grid], "exclude": [None], "knn": [knn], "self": selfs, "defect": [False],
                "images": [lambda: good], "zoom_readings": {0: (region, refs, 123.0)}}
    monkeypatch.setattr(zoom, "zoom_evidence_many", lambda product, jobs: pytest.fail("zoomed again") if jobs else [])
    saved = product.gate.band_low, product.gate.band_high
    product.gate.band_low, product.gate.band_high = 0.0, 1e9
    try:
        (item,) = read_items(product, material)
    finally:
        product.gate.band_low, product.gate.band_high = saved
    assert item.zoom == evidence_ratio(123.0, product.tool_limits.zoom_threshold)

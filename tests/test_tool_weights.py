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


def test_a_synthetic_defect_reads_higher_than_its_good_image_on_the_zoom(hazelnut_product, data_root):
    """The readings the fit uses, on real images: a pasted patch makes the zoom's evidence rise."""
    from iad_agent.imageio import load_image
    from iad_agent.product import list_images
    from iad_agent.vision.synthetic import DEFECT_MAKERS

    product = hazelnut_product
    good = load_image(list_images(data_root / "mvtec_ad/hazelnut/train/good")[3])  # not among the registered ones
    defect = DEFECT_MAKERS["cutpaste"](good, np.random.default_rng(0))[0]
    grids = list(product.extractor([good, defect]))
    material = {"grids": grids, "exclude": [None, None], "knn": [product.bank.patch_distances(g) for g in grids],
                "self": [None, None], "defect": [False, True], "images": [lambda: good, lambda: defect]}
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

"""Product management in the library API: version fingerprint, deletion, false-alarm rate ↔ threshold."""

from __future__ import annotations

import json

import pytest

from iad_agent import api


@pytest.fixture(scope="module")
def good_files(data_root):
    from iad_agent.product import list_images

    return list_images(data_root / "mvtec_ad/hazelnut/train/good")[:4]


def test_set_fpr_equals_registering_with_that_fpr(tmp_path, good_files):
    api.register("a", good_files[:2], workspace=tmp_path, fpr=0.05)
    api.register("b", good_files[:2], workspace=tmp_path, fpr=0.2)
    before = api.product_version("a", tmp_path)
    changed = api.set_fpr("a", 0.2, tmp_path)
    limits = lambda n: json.loads((tmp_path / "products" / n / "limits.json").read_text())  # noqa: E731
    # tool limits as at registration: zoom and compare follow the threshold, high-frequency from the stored readings
    for limit in ("zoom_threshold", "compare_threshold", "highfreq_threshold"):
        assert limits("a")[limit] == pytest.approx(limits("b")[limit], rel=1e-9)
    assert changed.bank.calibration.threshold == pytest.approx(api.load_product("b", tmp_path).bank.calibration.threshold)
    assert api.product_version("a", tmp_path) != before
    with pytest.raises(api.RegistrationError, match="between 0.001 and 0.5"):
        api.set_fpr("a", 0.9, tmp_path)


def test_fpr_for_threshold_inverts_threshold_for_fpr(tmp_path, hazelnut3_copy):
    product = api.load_product("hazelnut", hazelnut3_copy(tmp_path))  # any registered product: the session's shared one
    for fpr in (0.002, 0.01, 0.05, 0.3):
        assert api.fpr_for_threshold(product, api.threshold_for_fpr(product, fpr)) == pytest.approx(fpr, rel=1e-3)
    assert api.fpr_for_threshold(product, 1e9) == 0.001 and api.fpr_for_threshold(product, 0.0) == 0.5
    assert api.threshold_for_fpr(product, 0.05) == pytest.approx(product.bank.calibration.threshold)


def test_version_is_stable_and_delete_removes_the_product(tmp_path, hazelnut3_copy):
    hazelnut3_copy(tmp_path)  # a registered product (a copy of the session's shared one)
    v = api.product_version("hazelnut", tmp_path)
    assert v == api.product_version("hazelnut", tmp_path) and v.startswith("v")
    api.delete_product("hazelnut", tmp_path)
    assert api.list_products(tmp_path) == [] and not list((tmp_path / "products").iterdir())
    with pytest.raises(api.ProductNotFound):
        api.product_version("hazelnut", tmp_path)
    with pytest.raises(api.ProductNotFound):
        api.delete_product("hazelnut", tmp_path)
    with pytest.raises(api.RegistrationError, match="invalid product name"):
        api.delete_product("../etc", tmp_path)

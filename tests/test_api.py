"""The library API (iad_agent.api): registration, loading, inspection, streaming, typed errors."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

from iad_agent import api


def test_importing_the_api_loads_no_torch_or_faiss():
    code = "import sys, iad_agent.api; print(sorted(m for m in ('torch', 'faiss', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_register_load_and_list(tmp_path, data_root):
    from iad_agent.product import list_images

    files = list_images(data_root / "mvtec_ad/hazelnut/train/good")[:2]
    product = api.register("nut", files, workspace=tmp_path, priors={"good": "a brown hazelnut"})
    assert product.folder == tmp_path / "products/nut" and len(product.bank) == 2
    assert api.list_products(tmp_path) == ["nut"]
    loaded = api.load_product("nut", tmp_path)
    assert loaded.bank.calibration.threshold == pytest.approx(product.bank.calibration.threshold)
    assert loaded.priors["good"] == "a brown hazelnut"  # the user's priors override MMAD's ...
    assert "crack" not in loaded.priors  # ... which only a product named like an MMAD category gets


def test_registration_errors_are_typed_and_name_the_problem(tmp_path):
    with pytest.raises(api.RegistrationError, match="nothing to register"):
        api.register("nut", workspace=tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(api.RegistrationError, match="empty: no images found"):
        api.register("nut", empty, workspace=tmp_path)
    bad = tmp_path / "priors.json"
    bad.write_text("[1, 2]")
    with pytest.raises(api.RegistrationError, match="priors.json: priors must be a JSON object"):
        api.register("nut", priors=bad, workspace=tmp_path)
    with pytest.raises(api.RegistrationError, match="invalid product name"):
        api.register("../nut", empty, workspace=tmp_path)
    assert api.list_products(tmp_path) == []


def test_unknown_product_is_product_not_found(tmp_path):
    with pytest.raises(api.ProductNotFound, match="walnut") as info:
        api.load_product("walnut", tmp_path)
    assert info.value.registered == [] and isinstance(info.value, LookupError)


def test_policy_names_are_checked_before_the_product_is_loaded(tmp_path):
    # the same resolver as `iad eval`: a bad name is a PolicyConfigError, whatever the product
    with pytest.raises(api.PolicyConfigError, match="unknown policy 'oracle'"):
        api.make_inspector("not-registered", "oracle", workspace=tmp_path)
    with pytest.raises(api.PolicyConfigError, match="needs --base-url"):
        api.make_inspector("not-registered", "openai", workspace=tmp_path)


def test_inspect_with_an_ablation_policy(hazelnut_product, data_root):
    image = data_root / "mvtec_ad/hazelnut/test/crack/000.png"
    full = api.inspect(image, hazelnut_product)
    no_zoom = api.inspect(image, hazelnut_product, "embedded-no-zoom")
    assert "perceptive_zoomer" in {c.name for c in full.trajectory.tool_calls}
    assert "perceptive_zoomer" not in {c.name for c in no_zoom.trajectory.tool_calls}
    assert full.trajectory.answer.anomaly_present is True


def test_inspect_many_streams_results_and_reports_bad_images(hazelnut_product, data_root, tmp_path):
    fake = tmp_path / "photo.png"
    fake.write_text("not an image")
    images = [data_root / "mvtec_ad/hazelnut/test/good/000.png", fake, data_root / "mvtec_ad/hazelnut/test/hole/001.png"]
    stream = api.inspect_many(images, hazelnut_product, "knn")
    assert isinstance(stream, Iterator)
    first = next(stream)  # available before the other images are inspected
    assert first.ok and first.image == images[0] and first.result.trajectory.answer.anomaly_present is False
    rest = list(stream)
    assert not rest[0].ok and rest[0].result is None and "photo.png" in str(rest[0].error)
    assert rest[1].ok and rest[1].result.trajectory.answer.anomaly_present is True


def test_vlm_options_reach_the_backend():
    resolved = api.resolve_policy("openai-no-priors", options=api.VLMOptions(base_url="http://127.0.0.1:9/v1", model="m",
                                                                              timeout=7.0, max_retries=0))
    assert resolved.label == "openai-no-priors" and "prior_retriever" not in resolved.tools
    assert "anomaly_map" in resolved.tools  # VLM policies get the normal-bank evidence as a tool
    assert resolved.policy.timeout == 7.0 and resolved.policy.model == "m"

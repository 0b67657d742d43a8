"""Shared fixtures: the real data in ../shared/data and small registered products built from it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_root() -> Path:
    from iad_agent.datasets import data_root as find

    try:
        root = find()
    except Exception as exc:  # pragma: no cover - CI always has ../shared/data
        pytest.skip(f"real data not found: {exc}")
    return root


@pytest.fixture(scope="session")
def hazelnut_product(data_root):
    """hazelnut registered from 10 of its good training images (no defects, MMAD priors)."""
    from iad_agent.product import Product, list_images
    from iad_agent.tools.priors import domain_priors

    normals = list_images(data_root / "mvtec_ad/hazelnut/train/good")[::5]
    return Product.build("hazelnut", normals, priors=domain_priors("hazelnut"))


@pytest.fixture(scope="session")
def hazelnut_inspector(hazelnut_product):
    from iad_agent.inspector import Inspector

    return Inspector(hazelnut_product)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random Qwen2.5-VL checkpoint folder (config, weights, tokenizer, processor), built once."""
    from iad_agent.testing import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny") / "qwen2_5_vl")

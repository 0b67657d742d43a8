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


def hand_set_tool_weights(product):
    """Give ``product`` the hand-set tool weights (zoom 1, compare 0.5), in place; returns it.

    Registration learns the weights from synthetic defects and may switch a tool off (weight 0:
    never called) — for hazelnut it does. Tests of the tools' mechanics (calls, traces, reports)
    need the tools called, so their fixtures use the hand-set weights; ``test_tool_weights.py``
    tests the learning.
    """
    from iad_agent.policies.embedded import COMPARE, HAND_SET_WEIGHTS, ZOOM

    product.gate.w_zoom, product.gate.w_compare = HAND_SET_WEIGHTS[ZOOM], HAND_SET_WEIGHTS[COMPARE]
    return product


@pytest.fixture(scope="session")
def hazelnut_product(data_root):
    """hazelnut registered from 10 of its good training images (no defects, MMAD priors), hand-set tool weights."""
    from iad_agent.product import Product, list_images
    from iad_agent.tools.priors import domain_priors

    normals = list_images(data_root / "mvtec_ad/hazelnut/train/good")[::5]
    return hand_set_tool_weights(Product.build("hazelnut", normals, priors=domain_priors("hazelnut")))


@pytest.fixture(scope="session")
def hazelnut3_copy(tmp_path_factory, data_root):
    """``copy(dest) -> dest``: a private copy of ONE workspace with hazelnut registered by
    ``api.register`` from its first 3 good training images (learned tool weights).

    Registering costs seconds, so the session registers once and each module that needs such a
    workspace copies it (the product's ``current`` link copied as a link) instead of registering.
    """
    import shutil

    from iad_agent import api
    from iad_agent.product import list_images

    template = tmp_path_factory.mktemp("hazelnut3")
    api.register("hazelnut", list_images(data_root / "mvtec_ad/hazelnut/train/good")[:3], workspace=template)

    def copy(dest: Path) -> Path:
        shutil.copytree(template, dest, symlinks=True, dirs_exist_ok=True)
        return dest

    return copy


@pytest.fixture(scope="session")
def hazelnut_inspector(hazelnut_product):
    from iad_agent.inspector import Inspector

    return Inspector(hazelnut_product)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A tiny random Qwen2.5-VL checkpoint folder (config, weights, tokenizer, processor), built once."""
    from iad_agent.testing import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny") / "qwen2_5_vl")


@pytest.fixture(scope="session")
def cli_normals(tmp_path_factory, data_root):
    """5 good hazelnut images in a folder of their own."""
    import shutil

    folder = tmp_path_factory.mktemp("normals")
    for p in sorted((data_root / "mvtec_ad/hazelnut/train/good").glob("*.png"))[:40:8]:
        shutil.copy(p, folder / p.name)
    return folder


@pytest.fixture(scope="session")
def cli_workspace(tmp_path_factory, cli_normals, data_root):
    """A workspace with hazelnut registered by `iad register` (5 good images, labelled hole and print examples),
    then given the hand-set tool weights."""
    import shutil

    from typer.testing import CliRunner

    from iad_agent.cli import app

    ws = tmp_path_factory.mktemp("ws")
    defects = tmp_path_factory.mktemp("defects")
    for kind in ("hole", "print"):
        (defects / kind).mkdir()
        shutil.copy(data_root / f"mvtec_ad/hazelnut/test/{kind}/000.png", defects / kind / "000.png")
    r = CliRunner().invoke(app, ["register", "hazelnut", "--normals", str(cli_normals), "--defects", str(defects),
                                 "--workspace", str(ws)])
    assert r.exit_code == 0, r.output
    assert "registered hazelnut: 5 good images" in r.stdout
    from iad_agent.product import Product

    folder = ws / "products" / "hazelnut"
    hand_set_tool_weights(Product.load(folder)).save(folder)
    return ws

"""Bring your own backbone: tiny randomly initialised Hugging Face (and timm) models, built from a
config and saved to a temporary folder, drive register + inspect on real images; the product
reloads with the same backbone; a missing or replaced backbone is named when the product loads."""

from __future__ import annotations

import dataclasses

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from iad_agent import api
from iad_agent.cli import app
from iad_agent.vision import backbones
from iad_agent.vision.backbones import HFBackbone, feature_config
from iad_agent.vision.features import FeatureConfig, FeatureExtractor

runner = CliRunner()
SMALL = {"hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2, "intermediate_size": 64}
TEXT = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64, "vocab_size": 99,
        "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}


def _configs():
    import transformers as t

    return {
        "dinov2": t.Dinov2Config(patch_size=14, image_size=56, **SMALL),
        "dinov2_reg": t.Dinov2WithRegistersConfig(patch_size=14, image_size=56, num_register_tokens=4, **SMALL),
        "dinov3": t.DINOv3ViTConfig(patch_size=16, image_size=64, num_register_tokens=4, **SMALL),
        "clip": t.CLIPConfig(vision_config={"patch_size": 16, "image_size": 64, **SMALL}, text_config=TEXT),
        "siglip_vision": t.SiglipVisionConfig(patch_size=16, image_size=64, **SMALL),
        "convnext": t.ConvNextConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1]),
        "resnet": t.ResNetConfig(hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], embedding_size=8),
    }


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Folders of tiny random models, as ``save_pretrained`` (or ``huggingface-cli download``) leaves them."""
    from transformers import AutoModel

    root = tmp_path_factory.mktemp("models")
    out = {}
    for name, config in _configs().items():
        torch.manual_seed(0)
        AutoModel.from_config(config).save_pretrained(root / name)
        out[name] = root / name
    return out


@pytest.fixture(scope="module")
def bottle(data_root):
    """A real non-square image (800×1600): the aspect ratio must be kept."""
    return Image.open(data_root / "mvtec_loco/juice_bottle/train/good/000.png").convert("RGB")


# (default layers, tokens, stride, input multiple)
EXPECTED = {
    "dinov2": ((4,), True, 14, 14),          # AnomalyDINO: the last block
    "dinov2_reg": ((4,), True, 14, 14),
    "dinov3": ((4,), True, 16, 16),
    "clip": ((2, 3), True, 16, 16),          # other ViTs: blocks at 1/2 and 3/4 depth
    "siglip_vision": ((2, 3), True, 16, 16),
    "convnext": ((2, 3), False, 8, 32),      # CNNs: the stride-8 and stride-16 stages
    "resnet": ((2, 3), False, 8, 32),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_family_gives_aspect_kept_patch_grids(models, bottle, name):
    config = feature_config(str(models[name]), 256)
    spec = config.spec
    assert (spec.layers, spec.tokens, spec.stride, spec.multiple) == EXPECTED[name]
    assert config.smooth == (1 if spec.tokens else 3)
    w, h = config.input_size(*bottle.size)
    assert w % spec.multiple == 0 and h % spec.multiple == 0 and 1.9 < h / w < 2.1  # 800×1600 kept tall
    grids = FeatureExtractor(config)([bottle, bottle.transpose(Image.Transpose.ROTATE_90)])
    assert isinstance(grids, list) and grids[0].shape[:2] == config.grid_shape(*bottle.size)
    assert grids[1].shape[:2] == grids[0].shape[1::-1]  # the rotated image: the transposed grid
    assert np.isfinite(grids[0]).all() and grids[0].std() > 0
    assert FeatureConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # as saved in bank.json


def test_vit_tokens_land_on_their_grid_cells(models, bottle):
    """Patch token k of the model's output is grid cell (k // columns, k % columns); class/register tokens dropped."""
    from transformers import AutoModel

    config = feature_config(str(models["dinov2_reg"]), 256)
    extractor = FeatureExtractor(config)
    grid = extractor([bottle])[0]
    x = extractor._to_tensor([bottle], config.input_size(*bottle.size))
    model = AutoModel.from_pretrained(models["dinov2_reg"], local_files_only=True).eval()
    with torch.inference_mode():
        tokens = model(pixel_values=x).last_hidden_state[0, 1 + 4:]  # after CLS and 4 registers
    rows, cols = grid.shape[:2]
    assert tokens.shape[0] == rows * cols
    np.testing.assert_allclose(grid.reshape(rows * cols, -1), tokens.numpy(), rtol=1e-4, atol=1e-5)


def test_normalisation_comes_from_the_folder_or_the_family(models, tmp_path):
    assert feature_config(str(models["clip"])).spec.mean[0] == pytest.approx(0.4815, abs=1e-4)  # CLIP's own
    assert feature_config(str(models["siglip_vision"])).spec.std == (0.5, 0.5, 0.5)
    folder = tmp_path / "dino"
    shutil.copytree(models["dinov2"], folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.1, 0.2, 0.3], "image_std": [1, 1, 1]}))
    assert feature_config(str(folder)).spec.mean == (0.1, 0.2, 0.3)


def test_layers_are_configurable_and_checked(models):
    assert feature_config(str(models["dinov2"]), layers=[2, -1]).spec.layers == (2, 4)
    assert feature_config(str(models["convnext"]), layers=[3]).spec.stride == 16
    with pytest.raises(ValueError, match=r"layer 9 is out of range: this model's layers are 0\.\.4"):
        feature_config(str(models["dinov2"]), layers=[9])
    with pytest.raises(ValueError, match="--layers is for custom backbones"):
        feature_config("efficientnet-lite0", layers=[1])


def test_bad_backbones_are_named(models, tmp_path):
    with pytest.raises(ValueError, match=f"{tmp_path / 'nowhere'}'.*no such folder"):
        feature_config(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a Hugging Face model folder"):
        feature_config(str(tmp_path / "empty"))
    broken = tmp_path / "broken"
    shutil.copytree(models["dinov2"], broken)
    (broken / "model.safetensors").write_bytes(b"not weights")
    with pytest.raises(ValueError, match=f"{broken}: cannot load"):
        feature_config(str(broken))
    with pytest.raises(ValueError, match="no such checkpoint file"):
        feature_config(f"timm:resnet18:{tmp_path / 'nothing.safetensors'}")
    with pytest.raises(ValueError, match="timm:MODEL_NAME:CHECKPOINT"):
        feature_config("timm:resnet18")


@pytest.fixture(scope="module")
def normals(tmp_path_factory, data_root):
    folder = tmp_path_factory.mktemp("normals")
    for p in sorted((data_root / "mvtec_ad/hazelnut/train/good").glob("*.png"))[:20:5]:
        shutil.copy(p, folder / p.name)
    return folder


@pytest.fixture(scope="module")
def registered(tmp_path_factory, models, normals):
    """``iad register nut --backbone <tiny DINOv2 folder>`` in a fresh workspace (a copy of the model we can move)."""
    root = tmp_path_factory.mktemp("byob")
    model = root / "dinov2-small"
    shutil.copytree(models["dinov2"], model)
    ws = root / "ws"
    r = runner.invoke(app, ["register", "nut", "--normals", str(normals), "--backbone", str(model), "--layers", "2,4",
                            "--resolution", "224", "--workspace", str(ws)])
    assert r.exit_code == 0, r.output
    assert "registered nut: 4 good images" in r.output
    return ws, model


def test_register_and_inspect_end_to_end(registered, data_root):
    ws, model = registered
    for image, expect in (("test/hole/001.png", True), ("test/good/000.png", None)):
        r = runner.invoke(app, ["inspect", str(data_root / "mvtec_ad/hazelnut" / image), "--product", "nut",
                                "--workspace", str(ws), "--json"])
        assert r.exit_code in (0, 1), r.output  # 0 normal, 1 anomalous (README: exit status)
        d = json.loads(r.stdout.strip().splitlines()[-1])
        assert d["score"] > 0 and d["threshold"] > 0 and isinstance(d["anomaly_present"], bool)
        assert r.exit_code == int(d["anomaly_present"])
        if expect is not None:  # a random tiny model is no detector; the answer is only well-formed
            assert len(d["box"] or [0, 0, 1, 1]) == 4


def test_saved_product_reloads_with_the_same_backbone(registered, data_root):
    ws, model = registered
    product = api.load_product("nut", ws)
    config = product.bank.config
    assert config.spec.path == str(model.resolve()) and config.spec.layers == (2, 4) and config.resolution == 224
    assert isinstance(product.extractor.backbone, HFBackbone)
    image = Image.open(data_root / "mvtec_ad/hazelnut/test/hole/001.png").convert("RGB")
    assert config.clip_length > 0  # a custom backbone's product caps its patch lengths too
    fresh_config = dataclasses.replace(feature_config(str(model), 224, [2, 4]), clip_length=config.clip_length)
    fresh = FeatureExtractor(fresh_config)([image])[0]
    np.testing.assert_allclose(product.extractor([image])[0], fresh, rtol=1e-5, atol=1e-6)
    stored = json.loads(next(ws.glob("products/.nut~v*/bank/bank.json")).read_text())["config"]
    assert stored["spec"]["kind"] == "hf" and stored["spec"]["model"] == "dinov2" and stored["spec"]["layers"] == [2, 4]


def test_a_missing_or_replaced_backbone_is_named_at_load(registered, models, data_root, tmp_path):
    ws, model = registered
    moved = tmp_path / "moved"
    shutil.move(model, moved)
    try:
        with pytest.raises(api.ProductError, match=f"its backbone's model folder {model} is missing"):
            api.load_product("nut", ws)
        r = runner.invoke(app, ["inspect", str(data_root / "mvtec_ad/hazelnut/test/good/000.png"), "--product", "nut",
                                "--workspace", str(ws)])
        assert r.exit_code != 0 and str(model) in r.output and "missing" in r.output
        shutil.copytree(models["clip"], model)  # another model in its place: its features would not match the bank
        with pytest.raises(api.ProductError, match="holds another model now"):
            api.load_product("nut", ws)
    finally:
        shutil.rmtree(model, ignore_errors=True)
        shutil.move(moved, model)
    assert api.load_product("nut", ws).bank.config.spec.path == str(model.resolve())


def test_api_register_refuses_a_bad_backbone_clearly(normals, tmp_path):
    with pytest.raises(api.RegistrationError, match="no such folder"):
        api.register("nut", normals, workspace=tmp_path / "ws", backbone=str(tmp_path / "nope"))
    assert not (tmp_path / "ws" / "products" / "nut").exists()


def test_eval_runs_with_a_custom_backbone(models, tmp_path):
    backbones._load_hf.cache_clear()
    out = tmp_path / "results"
    r = runner.invoke(app, ["eval", "--dataset", "mvtec", "--category", "hazelnut", "--shots", "1", "--max-test", "4",
                            "--policy", "knn", "--workers", "1", "--backbone", str(models["convnext"]), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert backbones._load_hf.cache_info().hits >= 1  # the products of the run were built on it
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["meta"]["runs"][-1]["features"]["spec"]["path"] == str(models["convnext"].resolve())


def test_timm_model_from_a_local_checkpoint(normals, data_root, tmp_path):
    timm = pytest.importorskip("timm", reason="timm needs a torchvision that loads beside this torch (README)")
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False)
    checkpoint = tmp_path / "test_resnet.safetensors"
    save_file(net.state_dict(), checkpoint)
    product = api.register("tr", normals, workspace=tmp_path / "ws", backbone=f"timm:test_resnet:{checkpoint}")
    assert product.bank.config.spec.layers == (2, 3) and product.bank.config.spec.stride == 8
    loaded = api.load_product("tr", tmp_path / "ws").extractor.backbone.model.state_dict()
    assert torch.equal(loaded["conv1.0.weight"], net.state_dict()["conv1.0.weight"])  # the checkpoint's weights
    result = api.inspect(data_root / "mvtec_ad/hazelnut/test/hole/001.png", product="tr", workspace=tmp_path / "ws")
    assert result.to_dict()["score"] > 0

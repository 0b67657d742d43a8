"""Supervised fine-tuning of a tiny random Qwen2.5-VL on real-image trajectories (issue 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from iad_agent.datasets import load_dataset
from iad_agent.tools import PerceptiveZoomer
from iad_agent.trajectories import BuildConfig, build_trajectory, make_split
from iad_agent.trajectories.builder import BuildResult, BuiltTrajectory
from iad_agent.trajectories.export import save
from iad_agent.training import SFTRunConfig, build_trainer, save_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _tools():
    # One tool keeps the system prompt, and so the byte-level sequences, short.
    return {"perceptive_zoomer": PerceptiveZoomer()}


@pytest.fixture(scope="module")
def dataset(hazelnut_product, data_root, tmp_path_factory):
    root = data_root / "mvtec_ad"
    samples = load_dataset("mvtec", root, "hazelnut", "test")
    picks = [s for s in samples if s.image_path.stem == "001" and s.defect_type in ("crack", "hole", None)]
    items = [BuiltTrajectory(build_trajectory(hazelnut_product, s, "perceptive", _tools(), max_steps=2), s, "perceptive",
                             "train", str(i)) for i, s in enumerate(picks)]
    split = make_split(load_dataset("mvtec", root, "hazelnut"), "mvtec", root, ["hazelnut"])
    out = tmp_path_factory.mktemp("traj")
    save(BuildResult(items, split, BuildConfig(root=str(root))), out)
    return out


def _config(model, data, out, **kw) -> SFTRunConfig:
    base = dict(model=str(model), data=str(data), out=str(out), max_steps=4, learning_rate=5e-3, gradient_accumulation_steps=1,
                warmup_steps=0, gradient_checkpointing=False, save_strategy="no", logging_steps=1, dtype="float32")
    return SFTRunConfig(**{**base, **kw})


def _loss(trainer, batch) -> float:
    import torch

    trainer.model.eval()
    with torch.no_grad():
        return float(trainer.model(**batch).loss)


@pytest.fixture(scope="module")
def trained(tiny_model, dataset, tmp_path_factory):
    cfg = _config(tiny_model, dataset, tmp_path_factory.mktemp("ckpt") / "full")
    trainer = build_trainer(cfg)
    batch = trainer.data_collator([trainer.train_dataset[0]])
    before = _loss(trainer, batch)
    weights = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    after = _loss(trainer, batch)
    return {"cfg": cfg, "trainer": trainer, "batch": batch, "before": before, "after": after, "weights": weights,
            "checkpoint": save_checkpoint(trainer, cfg)}


def test_loss_on_the_training_batch_goes_down(trained):
    assert trained["after"] < trained["before"] - 0.02, (trained["before"], trained["after"])


def test_only_the_models_own_turns_carry_loss(trained):
    trainer, batch = trained["trainer"], trained["batch"]
    tokenizer = trainer.processing_class.tokenizer
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    kept = labels != -100
    assert (labels[kept] == ids[kept]).all()
    messages = trainer.train_dataset[0]["messages"]
    assistant = "".join(m["content"][0]["text"] + "<|im_end|>\n" for m in messages if m["role"] == "assistant")
    assert tokenizer.decode(ids[kept]) == assistant
    masked = tokenizer.decode(ids[~kept])
    assert "<tool_response>" in masked and "Inspect this hazelnut" in masked and "<|image_pad|>" in masked
    image_token = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert not kept[ids == image_token].any()


def test_training_tokens_equal_the_hf_policys_tokens(trained):
    from iad_agent.policies.hf import encode_messages, load_processor

    trainer, batch = trained["trainer"], trained["batch"]
    row = trainer.train_dataset[0]
    images = iter(row["images"])
    messages = [{"role": m["role"], "content": [{"type": "image", "image": next(images)} if p["type"] == "image" else p
                                                for p in m["content"]]} for m in row["messages"]]
    inference = encode_messages(load_processor(trained["cfg"].model), messages, add_generation_prompt=False)
    n = int(batch["attention_mask"][0].sum())
    assert inference["input_ids"][0].tolist() == batch["input_ids"][0, :n].tolist()


def test_checkpoint_reloads_into_the_hf_policy_and_completes_an_episode(trained, hazelnut_product, data_root):
    from iad_agent.inspector import Inspector
    from iad_agent.policies.hf import HFPolicy

    ckpt = trained["checkpoint"]
    assert (ckpt / "model.safetensors").exists() and (ckpt / "preprocessor_config.json").exists()
    assert (ckpt / "chat_template.jinja").read_text() == (Path(trained["cfg"].model) / "chat_template.jinja").read_text()
    policy = HFPolicy(ckpt, max_new_tokens=8)
    image = data_root / "mvtec_ad/hazelnut/test/cut/000.png"
    result = Inspector(hazelnut_product, policy, _tools(), max_steps=2).inspect(image)
    traj = result.trajectory
    assert traj.stop_reason in ("answer", "budget")
    assert len(traj.steps) >= 1 and all(s.raw_output is not None for s in traj.steps)


def test_lora_checkpoint_loads_as_base_plus_adapter(tiny_model, dataset, tmp_path, hazelnut_product, data_root):
    from iad_agent.inspector import Inspector
    from iad_agent.policies.hf import HFPolicy

    cfg = _config(tiny_model, dataset, tmp_path / "lora", lora=True, lora_r=4, max_steps=1)
    trainer = build_trainer(cfg)
    trainable = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    trainer.train()
    ckpt = save_checkpoint(trainer, cfg)
    assert (ckpt / "adapter_config.json").exists() and not (ckpt / "config.json").exists()
    policy = HFPolicy(ckpt, max_new_tokens=4)
    assert Path(policy.model_path) == Path(tiny_model).resolve()
    result = Inspector(hazelnut_product, policy, _tools(), max_steps=1).inspect(data_root / "mvtec_ad/hazelnut/test/good/000.png")
    assert result.trajectory.stop_reason in ("answer", "budget")


def test_frozen_vision_encoder_keeps_its_weights(trained):
    import torch

    model, before = trained["trainer"].model, trained["weights"]
    params = dict(model.named_parameters())
    vision = [n for n in params if ".visual." in f".{n}" and "merger" not in n]
    assert vision and not any(params[n].requires_grad for n in vision)
    changed = [n for n in vision if not torch.equal(params[n].detach(), before[n])]
    assert not changed, f"frozen vision weights moved: {changed[:3]}"
    language = [n for n in params if "language_model" in n and params[n].requires_grad]
    assert any(not torch.equal(params[n].detach(), before[n]) for n in language)  # training did move weights


def test_config_loads_from_yaml_with_help(tmp_path):
    cfg = SFTRunConfig.from_yaml(CONFIGS / "sft_qwen2_5_vl_3b.yaml")
    assert cfg.learning_rate == 2e-5 and cfg.freeze_vision
    text = cfg.to_yaml()
    assert "# Peak learning rate." in text
    (tmp_path / "c.yaml").write_text(text)
    assert SFTRunConfig.from_yaml(tmp_path / "c.yaml") == cfg
    assert SFTRunConfig.from_yaml(tmp_path / "c.yaml", lora=True).lora
    (tmp_path / "bad.yaml").write_text("learning_rat: 1e-4\n")
    with pytest.raises(ValueError, match="unknown SFT setting"):
        SFTRunConfig.from_yaml(tmp_path / "bad.yaml")

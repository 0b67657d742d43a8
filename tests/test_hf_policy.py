"""HFPolicy on a tiny, randomly initialised Qwen2.5-VL built in a temp folder (no download).

The random model writes byte garbage: the whole loop must survive it, honour the step budget
and record every turn. Loading paths (plain folder, explicit LoRA adapter, a LoRA checkpoint
folder that names its base) are what SFT checkpoints go through.
"""

from __future__ import annotations

import json

import pytest
import torch

from iad_agent.agent.loop import run_episode
from iad_agent.inspector import Inspector
from iad_agent.policies import ScriptedPolicy, make_policy
from iad_agent.policies.hf import HFPolicy, encode_messages, load_processor
from iad_agent.tools import default_tools
from iad_agent.types import Step, ToolCall

CRACK = "mvtec_ad/hazelnut/test/crack/000.png"


@pytest.fixture(scope="module")
def tiny_policy(tiny_model):
    return HFPolicy(tiny_model, max_new_tokens=24, dtype="float32")


def test_tiny_checkpoint_loads_like_real_weights(tiny_model):
    from transformers import AutoModelForImageTextToText

    files = {p.name for p in tiny_model.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "preprocessor_config.json", "chat_template.jinja"} <= files
    model = AutoModelForImageTextToText.from_pretrained(tiny_model)
    assert model.config.vision_config.out_hidden_size == model.config.text_config.hidden_size
    assert sum(p.numel() for p in model.parameters()) < 500_000
    processor = load_processor(tiny_model)
    for text in ("<tool_call>{'a': 1}</tool_call>", "<think>héllo ☃\n\n</think>"):
        assert processor.tokenizer.decode(processor.tokenizer(text)["input_ids"]) == text


def test_garbage_output_uses_up_the_budget(tiny_policy, hazelnut_product, data_root):
    inspector = Inspector(hazelnut_product, tiny_policy, default_tools(anomaly_map=True), max_steps=3)
    result = inspector.inspect(data_root / CRACK)
    traj = result.trajectory
    assert traj.stop_reason == "budget" and traj.answer.anomaly_present is None
    assert "budget" in traj.answer.reason
    assert len(traj.steps) == 3
    for step in traj.steps:
        assert isinstance(step.raw_output, str)
        assert step.parse_errors  # garbage is an error observation, never a crash
        assert 0 < step.usage["completion_tokens"] <= 24
        assert step.usage["total_tokens"] == step.usage["prompt_tokens"] + step.usage["completion_tokens"]
    # each turn sees the one before it and the error it caused
    prompts = [s.usage["prompt_tokens"] for s in traj.steps]
    assert prompts[0] < prompts[1] < prompts[2]
    messages = traj.to_messages()
    assert [m["role"] for m in messages] == ["system", "user"] + ["assistant", "user"] * 3
    d = result.to_dict()
    assert d["anomaly_present"] is None and d["stop_reason"] == "budget"
    json.dumps(d)


def test_prompt_holds_history_and_tool_images(tiny_policy, hazelnut_product, data_root):
    inspector = Inspector(hazelnut_product, tiny_policy, default_tools(anomaly_map=True), max_steps=1)
    episode, _ = inspector.episode(data_root / CRACK)
    look = Step(thought="look closer", tool_calls=[ToolCall("perceptive_zoomer", {"box": [0.3, 0.3, 0.6, 0.6]}),
                                                  ToolCall("anomaly_map", {"box": [0.3, 0.3, 0.6, 0.6]})])
    run_episode(ScriptedPolicy([look]), inspector.tools, episode, max_steps=1)
    assert all(o.ok for o in episode.trajectory.steps[0].observations)
    messages = tiny_policy.messages(episode)
    inputs = encode_messages(tiny_policy.processor, messages)
    assert inputs["image_grid_thw"].shape[0] == 3  # the query, the zoomed crop, the heat-map overlay
    n_image_tokens = int((inputs["input_ids"] == tiny_policy.processor.image_token_id).sum())
    assert n_image_tokens == int(inputs["image_grid_thw"].prod(dim=1).sum()) // 4
    text = tiny_policy.processor.decode(inputs["input_ids"][0])
    assert "<tools>" in text and "[perceptive_zoomer]" in text and "[anomaly_map] Anomaly score" in text
    assert text.endswith("<|im_start|>assistant\n")
    step = tiny_policy.act(episode, inspector.tools)
    assert step.usage["prompt_tokens"] == inputs["input_ids"].shape[1]


def test_sampled_decoding(tiny_model, hazelnut_product, data_root):
    policy = make_policy("hf", model=str(tiny_model), temperature=1.0, max_new_tokens=8, base_url=None, dtype="float32",
                         device="cpu", adapter=None, concurrency=None)
    assert policy.temperature == 1.0 and policy.concurrency == 1
    episode, _ = Inspector(hazelnut_product, policy, default_tools()).episode(data_root / CRACK)
    step = policy.act(episode, default_tools())
    assert step.usage["completion_tokens"] <= 8 and step.raw_output is not None


def test_lora_adapter_loads_both_ways(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    base = AutoModelForImageTextToText.from_pretrained(tiny_model)
    before = base.model.language_model.layers[0].self_attn.q_proj.weight.detach().clone()
    lora = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    adapter = tmp_path / "checkpoint"
    lora.save_pretrained(adapter)  # what trainer.save_model() writes for a LoRA run (SFT adds the processor files)

    explicit = HFPolicy(tiny_model, adapter=adapter, max_new_tokens=4)
    implicit = HFPolicy(adapter, max_new_tokens=4)  # the checkpoint folder names its base model
    for policy in (explicit, implicit):
        after = policy.model.model.language_model.layers[0].self_attn.q_proj.weight
        assert not torch.allclose(before, after)  # the adapter was merged in
    assert implicit.model_path == str(tiny_model) and implicit.adapter == str(adapter)
    with pytest.raises(ValueError, match="itself a LoRA adapter"):
        HFPolicy(adapter, adapter=adapter)


def test_make_policy_hf_needs_a_model():
    with pytest.raises(ValueError, match="--model"):
        make_policy("hf", model=None, base_url="http://127.0.0.1:1/v1")

"""`iad train grpo` on TRL's GRPOTrainer: a tiny random Qwen2.5-VL (and Qwen3-VL), real images and tools (issue 13).

Marked slow (about a minute: two GRPO runs with real tool calls); it still runs in CI.
"""

from __future__ import annotations

import pytest
import torch

from iad_agent.trajectories import BuildConfig
from iad_agent.trajectories.rl_prompts import build_from_dataset

pytestmark = pytest.mark.slow

SCRIPT = '<think>look closer</think>\n<tool_call>{"name": "perceptive_zoomer", "arguments": {"box": [0.2, 0.2, 0.6, 0.6]}}</tool_call>'


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from iad_agent.testing import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny") / "qwen2_5_vl")


@pytest.fixture(scope="module")
def rl_data(data_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("rl")
    config = BuildConfig(dataset="mvtec", root=str(data_root / "mvtec_ad"), train_categories=["hazelnut"],
                         held_out_categories=[], max_per_category=2, normals_per_category=2)
    build_from_dataset(config, out)
    return out


def _script_first_turns(model, tokenizer):
    """Row 0 of every first-turn generation writes a real zoom call (a random model never would)."""
    original = model.generate
    script = tokenizer(SCRIPT)["input_ids"] + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    turn_start = tokenizer.convert_tokens_to_ids("<|im_start|>")

    def generate(*args, **kwargs):
        out = original(*args, **kwargs)
        ids = kwargs["input_ids"]
        if int((ids[0] == turn_start).sum()) > 3:  # system, user, assistant header: later turns run as they come
            return out
        width = max(out.shape[1], ids.shape[1] + len(script))
        padded = torch.full((out.shape[0], width), tokenizer.pad_token_id, dtype=out.dtype)
        padded[:, : out.shape[1]] = out
        padded[0, ids.shape[1]:] = tokenizer.pad_token_id
        padded[0, ids.shape[1]: ids.shape[1] + len(script)] = torch.tensor(script)
        return padded

    model.generate = generate


def _train(model_path, rl_data, out, steps: int = 2):
    from iad_agent.training.grpo import GRPORunConfig, build_trainer, save_checkpoint

    cfg = GRPORunConfig(model=str(model_path), data=str(rl_data), out=str(out), num_generations=2,
                        per_device_train_batch_size=2, max_steps=steps, max_completion_length=240,
                        learning_rate=5e-3, gradient_checkpointing=False, dtype="float32", save_strategy="no")
    trainer = build_trainer(cfg)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    _script_first_turns(trainer.model, trainer.processing_class.tokenizer)
    trainer.train()
    return {"cfg": cfg, "trainer": trainer, "before": before, "checkpoint": save_checkpoint(trainer, cfg)}


@pytest.fixture(scope="module")
def trained(tiny_model, rl_data, tmp_path_factory):
    return _train(tiny_model, rl_data, tmp_path_factory.mktemp("ckpt") / "grpo")


def test_tool_result_tokens_carry_no_loss(trained):
    trainer = trained["trainer"]
    batch = trainer.last_batch
    tokenizer = trainer.processing_class.tokenizer
    rows = [i for i in range(batch["tool_mask"].shape[0]) if (batch["tool_mask"][i] * batch["completion_mask"][i] == 0).any()
            and batch["completion_mask"][i].sum() > 0 and (batch["tool_mask"][i] == 0).any()]
    assert rows, "no rollout of the last batch made a tool call"
    i = rows[0]
    ids, keep = batch["completion_ids"][i], (batch["completion_mask"][i] * batch["tool_mask"][i]).bool()
    masked = tokenizer.decode(ids[~keep & batch["completion_mask"][i].bool()])
    kept = tokenizer.decode(ids[keep])
    assert "<tool_response>" in masked and "<|image_pad|>" in masked and "[perceptive_zoomer] Zoomed into" in masked
    assert "<tool_response>" not in kept and "<|image_pad|>" not in kept
    assert kept.startswith(SCRIPT)


def _assert_training_tokens_equal_the_hf_policys(trained):
    """Prompt + the model's turn + TRL's tool turn = what HFPolicy encodes for the same episode."""
    from iad_agent.inspector import Inspector
    from iad_agent.policies.hf import HFPolicy, encode_messages
    from iad_agent.tools import default_tools
    from iad_agent.tools.base import execute
    from iad_agent.training.environment import ProductCache
    from iad_agent.types import Step

    trainer = trained["trainer"]
    batch = trainer.last_batch
    tokenizer = trainer.processing_class.tokenizer
    i = next(i for i in range(batch["tool_mask"].shape[0]) if (batch["tool_mask"][i][batch["completion_mask"][i].bool()] == 0).any())
    prompt = batch["prompt_ids"][i][batch["prompt_mask"][i].bool()].tolist()
    completion = batch["completion_ids"][i][batch["completion_mask"][i].bool()].tolist()
    mask = batch["tool_mask"][i][batch["completion_mask"][i].bool()].tolist()
    end_of_tools = len(mask) - mask[::-1].index(0)
    training_ids = prompt + completion[:end_of_tools]
    text = tokenizer.decode(prompt)
    row = next(r for r in trainer.train_dataset if f"Inspect this {r['category']}" in text)
    # the same episode, run by the agent loop's pieces: HFPolicy renders and encodes it
    policy = HFPolicy(trained["checkpoint"], max_new_tokens=4)
    product = ProductCache().get(row["category"], row["bank"])
    tools = default_tools(anomaly_map=True)
    candidates = []
    for source in {r["source_image"] for r in trainer.train_dataset}:
        episode, _ = Inspector(product, policy, tools).episode(source)
        turn = policy.to_step(type("C", (), {"text": SCRIPT, "tool_calls": [], "reasoning": "", "usage": {}, "finish_reason": "stop"})(),
                              episode, tools)
        assert isinstance(turn, Step) and turn.tool_calls
        turn.observations = [execute(c, tools, episode) for c in turn.tool_calls]
        episode.trajectory.steps.append(turn)
        candidates.append(encode_messages(policy.processor, policy.messages(episode))["input_ids"][0].tolist())
    assert training_ids in candidates


def test_training_tokens_equal_the_hf_policys_tokens(trained):
    _assert_training_tokens_equal_the_hf_policys(trained)


def test_qwen3_vl_tool_turns_render_as_the_hf_policy_renders_them(rl_data, tmp_path):
    """Qwen3-VL's path: its stock template is checked, replaced by the tool-aware one, and a real
    zoom call's tool turn (text + image tokens) is token for token what HFPolicy sends."""
    from iad_agent.testing import build_tiny_qwen3_vl
    from iad_agent.training.templates import QWEN3_VL_TOOLS

    trained = _train(build_tiny_qwen3_vl(tmp_path / "qwen3_vl"), rl_data, tmp_path / "grpo", steps=1)
    assert trained["trainer"].processing_class.chat_template == QWEN3_VL_TOOLS
    _assert_training_tokens_equal_the_hf_policys(trained)


def test_rewards_and_tool_calls_are_logged_and_weights_move(trained):
    trainer = trained["trainer"]
    logged = {k for entry in trainer.state.log_history for k in entry}
    for name in ("format_reward", "accuracy_reward", "localization_reward", "defect_type_reward", "behaviour_reward",
                 "gated_tool_reward"):
        assert f"rewards/{name}/mean" in logged, name
    assert "tools/call_frequency" in logged and "tools/perceptive_zoomer" in logged
    assert sum(1 for e in trainer.state.log_history if "loss" in e) == 2
    moved = [n for n, p in trainer.model.named_parameters() if n in trained["before"] and not torch.equal(p, trained["before"][n])]
    assert moved


def test_checkpoint_reloads_into_the_hf_policy_and_completes_an_episode(trained, data_root, hazelnut_product):
    from iad_agent.inspector import Inspector
    from iad_agent.policies.hf import HFPolicy
    from iad_agent.tools import default_tools

    policy = HFPolicy(trained["checkpoint"], max_new_tokens=8)
    result = Inspector(hazelnut_product, policy, default_tools(anomaly_map=True), max_steps=2).inspect(
        data_root / "mvtec_ad/hazelnut/test/crack/001.png")
    assert result.trajectory.stop_reason in ("answer", "budget") and len(result.trajectory.steps) >= 1


def test_config_yaml(tmp_path):
    from pathlib import Path

    from iad_agent.training.grpo import GRPORunConfig

    cfg = GRPORunConfig.from_yaml(Path(__file__).resolve().parents[1] / "configs/grpo_qwen2_5_vl_3b.yaml")
    assert (cfg.num_generations, cfg.learning_rate, cfg.beta, cfg.epsilon, cfg.max_tool_rounds) == (8, 1e-6, 0.1, 0.2, 3)
    (tmp_path / "c.yaml").write_text(cfg.to_yaml())
    assert GRPORunConfig.from_yaml(tmp_path / "c.yaml") == cfg
    (tmp_path / "bad.yaml").write_text("num_generation: 4\n")
    with pytest.raises(ValueError, match="unknown GRPO setting"):
        GRPORunConfig.from_yaml(tmp_path / "bad.yaml")

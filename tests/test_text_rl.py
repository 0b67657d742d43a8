"""Text mode and the SmolLM2 benchmark's pipeline (issue 13, item 5), with a tiny random Llama in its place."""

from __future__ import annotations

import doctest
import json
import threading

import pytest
import torch

SCRIPT = '<think>look</think>\n<tool_call>{"name": "perceptive_zoomer", "arguments": {"box": [0.2, 0.2, 0.6, 0.6]}}</tool_call>'


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    from iad_agent.testing import build_tiny_chatml_lm

    return build_tiny_chatml_lm(tmp_path_factory.mktemp("tiny") / "lm")


@pytest.fixture(scope="module")
def cfg(tiny_lm, tmp_path_factory):
    from iad_agent.training.text_rl import TextRLConfig

    return TextRLConfig(out=str(tmp_path_factory.mktemp("text_rl")), model=str(tiny_lm), train=["mvtec:hazelnut"],
                        held_out=["mvtec:transistor"], max_per_category=4, grpo_steps=2, num_generations=2,
                        sft_epochs=1, sft_batch_size=4, max_new_tokens=8, max_completion_length=120)


@pytest.fixture(scope="module")
def cases(cfg, data_root):
    from iad_agent.training.text_data import prepare_cases

    return prepare_cases(cfg.train, cfg)


def test_doctests():
    from iad_agent.policies import text

    assert doctest.testmod(text).failed == 0


def test_cases_hold_the_global_look_and_the_hot_spot_zoom(cases):
    from iad_agent.policies.text import look_text, text_tools
    from iad_agent.training.text_data import hot_box

    assert len(cases) == 4 and {c.sample.label for c in cases} == {0, 1}
    for case in cases:
        assert "grid" not in case.episode.__dict__ or case.episode.__dict__["grid"] is not None
        assert look_text(case.episode.look).startswith("Global ratio ")
        cached = case.episode.memo["text_tool_results"]
        assert len(cached) == 1
        again = text_tools()["perceptive_zoomer"]({"box": hot_box(case.episode)}, case.episode)
        assert again is next(iter(cached.values()))  # a cache hit, not a second run
        assert again.text.startswith("zoom ratio ") and not again.images


def test_teacher_zooms_only_when_ambiguous_and_answers_the_truth(cases):
    from iad_agent.agent.loop import run_episode
    from iad_agent.agent.protocol import parse_model_output
    from iad_agent.policies.text import fresh_episode, text_tools
    from iad_agent.training.text_data import BAND, TextTeacher, sft_rows

    for case in cases:
        episode = run_episode(TextTeacher(), text_tools(), fresh_episode(case.episode), 3)
        traj = episode.trajectory
        assert traj.answer.anomaly_present == bool(case.sample.label)
        assert len(traj.tool_calls) == int(BAND[0] <= episode.look.ratio <= BAND[1])
        for step in traj.steps:
            assert parse_model_output(step.raw_output).well_formed
        assert case.episode.trajectory.steps == []  # the cached episode is untouched
    rows = sft_rows(cases, 3)
    assert len(rows) == sum(1 + int(BAND[0] <= c.episode.look.ratio <= BAND[1]) for c in cases)
    assert all(r["completion"][0]["role"] == "assistant" and r["prompt"][-1]["role"] == "user" for r in rows)
    assert rows[0]["prompt"][1]["content"][0]["text"].startswith("Global ratio ")


def test_batcher_gathers_concurrent_turns_and_routes_each_result():
    from iad_agent.policies.text import _Batcher

    sizes = []

    def run_batch(batch):
        sizes.append(len(batch))
        return [[x * 10 for x in ids] for ids in batch]

    batcher = _Batcher(run_batch, max_batch=4, window_s=0.5)
    out = {}
    threads = [threading.Thread(target=lambda i=i: out.__setitem__(i, batcher([i, i]))) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == {i: [i * 10, i * 10] for i in range(8)}
    assert sum(sizes) == 8 and max(sizes) == 4 and len(sizes) <= 4


def _script_first_turns(model, tokenizer):
    """Row 0 of every first-turn generation writes a real zoom call (a random model never would)."""
    original = model.generate
    script = tokenizer(SCRIPT, add_special_tokens=False)["input_ids"] + [tokenizer.convert_tokens_to_ids("<|im_end|>")]
    turn_start = tokenizer.convert_tokens_to_ids("<|im_start|>")

    def generate(*args, **kwargs):
        out = original(*args, **kwargs)
        ids = kwargs["input_ids"]
        if int((ids[0] == turn_start).sum()) > 3:
            return out
        width = max(out.shape[1], ids.shape[1] + len(script))
        padded = torch.full((out.shape[0], width), tokenizer.pad_token_id, dtype=out.dtype)
        padded[:, : out.shape[1]] = out
        padded[0, ids.shape[1]:] = tokenizer.pad_token_id
        padded[0, ids.shape[1]: ids.shape[1] + len(script)] = torch.tensor(script)
        return padded

    model.generate = generate


def test_grpo_tokens_equal_the_text_policys_tokens(cfg, cases, tmp_path, monkeypatch):
    """Prompt + the model's zoom turn + TRL's tool turn = what TextPolicy encodes for the same episode."""
    from iad_agent.policies.text import TextPolicy, encode_text, fresh_episode, load_text_model, text_tools
    from iad_agent.policies.vlm import Completion
    from iad_agent.training import text_rl
    from iad_agent.training.grpo import _trainer_class

    trainer_class = _trainer_class()

    class Scripted(trainer_class):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            _script_first_turns(self.model, self.processing_class)

    monkeypatch.setattr("iad_agent.training.grpo._trainer_class", lambda: Scripted)
    result = text_rl.train_grpo(cfg.model, cases, cfg, tmp_path / "grpo")
    trainer = result["trainer"]
    batch = trainer.last_batch
    rows = [i for i in range(batch["tool_mask"].shape[0])
            if (batch["tool_mask"][i][batch["completion_mask"][i].bool()] == 0).any()]
    assert rows, "no rollout made a tool call"
    i = rows[0]
    keep = batch["completion_mask"][i].bool()
    prompt = batch["prompt_ids"][i][batch["prompt_mask"][i].bool()].tolist()
    completion, mask = batch["completion_ids"][i][keep].tolist(), batch["tool_mask"][i][keep].tolist()
    end_of_tools = len(mask) - mask[::-1].index(0)
    training_ids = prompt + completion[:end_of_tools]
    tokenizer = trainer.processing_class
    masked = tokenizer.decode([t for t, m in zip(completion, mask) if m == 0])
    assert masked.count("<tool_response>") == 1 and "[perceptive_zoomer] zoom ratio " in masked
    assert tokenizer.decode(completion[: mask.index(0)], skip_special_tokens=True).startswith(SCRIPT)
    # the same episode through the agent loop's pieces
    model, tok = load_text_model(cfg.model)
    policy = TextPolicy((model, tok), max_steps=cfg.max_steps)
    candidates = []
    for case in cases:
        episode = fresh_episode(case.episode)
        tools = text_tools()
        step = policy.to_step(Completion(SCRIPT), episode, tools)
        step.observations = [tools[c.name](c.arguments, episode) for c in step.tool_calls]
        episode.trajectory.steps.append(step)
        candidates.append(encode_text(tok, policy.messages(episode))[0].tolist())
    assert training_ids in candidates
    assert {"rewards/format_reward/mean", "rewards/accuracy_reward/mean", "rewards/gated_tool_reward/mean",
            "tools/perceptive_zoomer"} <= {k for e in trainer.state.log_history for k in e}


def test_the_benchmark_runs_end_to_end(cfg, cases, data_root, monkeypatch):
    """Untrained → SFT → GRPO → evaluation on a held-out category, with results, report and plot.

    The training cases are this module's ``cases`` (``prepare_cases(cfg.train, cfg)``, the very call
    ``run`` makes; cases are read, never written): ``run`` prepares only the held-out ones itself,
    which saves registering hazelnut and its 4 global looks and zooms a second time.
    """
    from iad_agent.training import text_data
    from iad_agent.training.text_rl import run

    prepare = text_data.prepare_cases
    asked: list[list[str]] = []

    def prepared_once(specs, run_cfg, progress=None):
        asked.append(list(specs))
        return cases if list(specs) == list(cfg.train) and run_cfg is cfg else prepare(specs, run_cfg, progress)

    monkeypatch.setattr(text_data, "prepare_cases", prepared_once)
    results = run(cfg)
    assert asked == [list(cfg.train), list(cfg.held_out)]
    assert set(results["models"]) == {"untrained", "sft", "sft+grpo"}
    for r in results["models"].values():
        held = r["held_out"]
        assert held["n_images"] == 4 and set(held["categories"]) == {"transistor"}
        assert 0.0 <= held["balanced_accuracy"] <= 1.0 and held["tool_calls_per_image"] >= 0
    assert sum(1 for e in results["grpo_log"] if "reward" in e) == 2
    out = cfg.out
    saved = json.loads((__import__("pathlib").Path(out) / "results.json").read_text())
    assert saved["models"]["sft"]["held_out"]["mean_reward"] == results["models"]["sft"]["held_out"]["mean_reward"]
    for name in ("report.md", "reward.png", "sft/config.json", "grpo/adapter_config.json"):
        assert (__import__("pathlib").Path(out) / name).exists(), name


def test_cli_prints_and_refuses_settings():
    from typer.testing import CliRunner

    from iad_agent.cli import app

    runner = CliRunner()
    r = runner.invoke(app, ["train", "text-rl", "--out", "x", "--grpo-steps", "3", "--print-config"])
    assert r.exit_code == 0 and "grpo_steps: 3" in r.stdout and "# GRPO optimizer steps." in r.stdout
    r = runner.invoke(app, ["train", "text-rl", "--out", "x", "--set", "grpo_step=3"])
    assert r.exit_code != 0 and "unknown text-RL setting" in r.output

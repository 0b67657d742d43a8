"""GRPO with multi-turn tool calling on TRL's ``GRPOTrainer`` (AgentIAD / IndusAgent stage 2).

Nothing of the RL loop is written here: TRL samples ``num_generations`` rollouts per prompt,
parses each turn's ``<tool_call>`` blocks (:data:`~iad_agent.training.templates.RESPONSE_TEMPLATE`),
runs them in an :class:`~iad_agent.training.environment.InspectionEnvironment` (the project's
own tools on an episode built as at inference), appends the results with the tool-aware chat
template (token-for-token the ``hf`` policy's observation turn), generates the next turn, up
to ``max_tool_rounds`` rounds, masks the tool-result tokens out of the loss (``tool_mask``),
scores every rollout with :mod:`iad_agent.rewards` (each component logged as
``rewards/<name>/mean``, tool calls as ``tools/call_frequency`` and ``tools/<name>``), and
takes the clipped, KL-regularised policy-gradient step. Defaults follow AgentIAD: 8 rollouts
per prompt, learning rate 1e-6, KL coefficient 0.1, clip 0.2, at most 3 tool rounds.

The checkpoint holds the model (or the LoRA adapter) and the processor with the tool-aware
chat template, which renders every conversation the ``hf`` policy sends exactly as the model's
own template did, so ``iad inspect --policy hf --model <out>`` loads it as is.
"""

from __future__ import annotations

import functools
import json
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from iad_agent.rewards import DEFAULT_WEIGHTS, REWARDS
from iad_agent.tools import AnomalyMap, ComparativeRetriever, HighFrequencyEnhancer, PerceptiveZoomer, PriorRetriever
from iad_agent.training.sft import LORA_TARGETS, YamlConfig, _help, freeze_vision_tower

log = logging.getLogger(__name__)

ALL_TOOLS = [PerceptiveZoomer.name, ComparativeRetriever.name, HighFrequencyEnhancer.name, PriorRetriever.name, AnomalyMap.name]


@dataclass
class GRPORunConfig(YamlConfig):
    """Everything ``iad train grpo`` needs; loadable from YAML (:meth:`from_yaml`)."""

    kind = "GRPO"

    model: str = _help("Folder of the starting model: an SFT checkpoint (`iad train sft`), never downloaded.", "")
    data: str = _help("Folder written by `iad trajectories build --format rl-prompts`.", "")
    out: str = _help("Output folder for the checkpoint (weights or LoRA adapter + processor).", "")
    train_split: str = _help("Split of the dataset to train on.", "train")
    tools: list[str] = _help("Tools of the system prompt the environment runs (others answer with an error).",
                             factory=lambda: list(ALL_TOOLS))
    reward_weights: dict[str, float] = _help("Weight of each reward of iad_agent.rewards (0 leaves it out).",
                                             factory=lambda: dict(DEFAULT_WEIGHTS))
    num_generations: int = _help("Rollouts per prompt (the GRPO group; AgentIAD: 8).", 8)
    learning_rate: float = _help("Peak learning rate (AgentIAD: 1e-6).", 1e-6)
    beta: float = _help("KL coefficient against the starting model (AgentIAD: 0.1; 0 skips the reference model).", 0.1)
    epsilon: float = _help("PPO-style clipping of the probability ratio (AgentIAD: 0.2).", 0.2)
    max_tool_rounds: int = _help("At most this many tool-calling rounds per rollout (AgentIAD: 3).", 3)
    max_completion_length: int = _help("Tokens per rollout, tool results included.", 2048)
    temperature: float = _help("Sampling temperature of the rollouts.", 1.0)
    per_device_train_batch_size: int = _help("Rollouts per device per step (a multiple of num_generations overall).", 8)
    gradient_accumulation_steps: int = _help("Steps accumulated per optimizer update.", 1)
    num_train_epochs: float = _help("Epochs over the prompts.", 1.0)
    max_steps: int = _help("Stop after this many optimizer steps (-1: run all epochs).", -1)
    max_image_side: int = _help("Longer side of every image given to the model (as the hf policy's max_image_side).", 768)
    lora: bool = _help("Train a LoRA adapter (PEFT) on the language model instead of all its weights.", False)
    lora_r: int = _help("LoRA rank.", 16)
    lora_alpha: int = _help("LoRA alpha (scale = alpha / r).", 32)
    lora_dropout: float = _help("LoRA dropout.", 0.05)
    lora_targets: str = _help("Regex of the modules LoRA adapts (default: the language model's linear layers).", LORA_TARGETS)
    freeze_vision: bool = _help("Freeze the vision encoder (its merger / projector stays trainable).", True)
    gradient_checkpointing: bool = _help("Recompute activations in the backward pass (less memory, ~30% slower).", True)
    bf16: bool | None = _help("bfloat16 mixed precision (null: on when a CUDA GPU supports it).", None)
    dtype: str = _help("Dtype to load the weights in: auto, float32, bfloat16.", "auto")
    attn_implementation: str | None = _help("Attention kernel: sdpa, eager, flash_attention_2 (null: the model's default).", None)
    use_vllm: bool = _help("Generate with vLLM (GPU; `vllm_mode: colocate` shares the training GPUs).", False)
    vllm_mode: str = _help("vLLM mode: colocate (same GPUs) or server (`trl vllm-serve`).", "colocate")
    vllm_gpu_memory_utilization: float = _help("GPU memory share vLLM may take in colocate mode.", 0.3)
    logging_steps: int = _help("Log rewards, tool calls and the loss every this many steps.", 1)
    save_strategy: str = _help("When to save intermediate checkpoints: steps, epoch or no.", "steps")
    save_steps: int = _help("Save an intermediate checkpoint every this many steps.", 100)
    save_total_limit: int = _help("Keep at most this many intermediate checkpoints.", 2)
    seed: int = _help("Random seed.", 42)
    report_to: list[str] = _help("Where to report metrics (none, tensorboard, wandb, ...).", factory=lambda: ["none"])
    deepspeed: str | None = _help("DeepSpeed JSON config (or use `accelerate launch --config_file ...`).", None)


class ToolUsage:
    """Not a reward (always ``None``, weight 0): logs how often each tool was called per rollout."""

    __name__ = "tool_usage"

    def __call__(self, completions: list, environments: list | None = None, log_metric: Any = None, **_: Any) -> list[None]:
        if environments and log_metric is not None:
            counts = Counter(call.name for env in environments for call in getattr(env, "calls", []))
            for name in ALL_TOOLS:
                log_metric(f"tools/{name}", counts.get(name, 0) / len(environments))
        return [None] * len(completions)


def _trainer_class():
    from trl import GRPOTrainer

    class InspectionGRPOTrainer(GRPOTrainer):
        """``GRPOTrainer`` that keeps the last training batch's token ids and masks (tests, diagnostics)."""

        last_batch: dict[str, Any] | None = None

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001, ANN201
            keys = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "tool_mask")
            self.last_batch = {k: inputs[k].detach().cpu() for k in keys if k in inputs}
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    return InspectionGRPOTrainer


def _check(cfg: GRPORunConfig) -> None:
    for name in ("model", "data", "out"):
        if not getattr(cfg, name):
            raise ValueError(f"GRPO needs `{name}` (a folder)")
    if not Path(cfg.model).is_dir():
        raise ValueError(f"{cfg.model}: model folder not found (weights are never downloaded)")
    if not (Path(cfg.data) / "dataset_dict.json").exists():
        raise ValueError(f"{cfg.data}: not a dataset folder written by `iad trajectories build --format rl-prompts`")
    unknown = sorted(set(cfg.reward_weights) - set(REWARDS)) + sorted(set(cfg.tools) - set(ALL_TOOLS))
    if unknown:
        raise ValueError(f"unknown reward or tool name(s) {', '.join(unknown)}; rewards: {', '.join(REWARDS)}; "
                         f"tools: {', '.join(ALL_TOOLS)}")


def load_prompts(cfg: GRPORunConfig):
    from datasets import load_from_disk

    data = load_from_disk(cfg.data)
    if cfg.train_split not in data:
        raise ValueError(f"{cfg.data}: no {cfg.train_split!r} split (has {', '.join(data)})")
    train = data[cfg.train_split]
    if "prompt" not in train.column_names or "source_image" not in train.column_names:
        raise ValueError(f"{cfg.data}: rows need prompt, images, source_image and bank (build it with --format rl-prompts)")
    return train


def build_trainer(cfg: GRPORunConfig):
    """The configured TRL ``GRPOTrainer`` (model, tool-aware processor, environment, rewards, LoRA)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    from iad_agent.tools import default_tools
    from iad_agent.training.environment import InspectionEnvironment, ProductCache
    from iad_agent.training.processor import load_training_processor
    from iad_agent.training.templates import RESPONSE_TEMPLATE, tool_chat_template

    _check(cfg)
    model_path = str(Path(cfg.model).resolve())
    train = load_prompts(cfg)
    processor = load_training_processor(model_path)
    model_type = AutoConfig.from_pretrained(model_path, local_files_only=True).model_type
    processor.chat_template = tool_chat_template(processor, model_type)
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.response_template = RESPONSE_TEMPLATE
    text_mode = not hasattr(processor, "image_processor")
    dtype = cfg.dtype if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    extra = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    auto = AutoModelForCausalLM if text_mode else AutoModelForImageTextToText
    model = auto.from_pretrained(model_path, dtype=dtype, local_files_only=True, **extra)
    if cfg.freeze_vision and not text_mode:
        freeze_vision_tower(model)
    tools = {name: tool for name, tool in default_tools(anomaly_map=True).items() if name in cfg.tools}
    factory = functools.partial(InspectionEnvironment, ProductCache(), tools, cfg.max_image_side, text_mode)
    # The model must never write image / video placeholders itself (they would need pixels it has not got).
    vision = ["<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"]
    suppress = [i for i in tokenizer.convert_tokens_to_ids(vision) if i is not None and i != tokenizer.unk_token_id]
    args = grpo_args(cfg, suppress if not text_mode else None)
    return _trainer_class()(model=model, reward_funcs=reward_funcs(cfg), args=args,
                            train_dataset=train, processing_class=processor, peft_config=lora_config(cfg),
                            environment_factory=factory)


def grpo_args(cfg: GRPORunConfig, suppress_tokens: list[int] | None = None):
    """TRL's ``GRPOConfig`` for a run (``suppress_tokens``: token ids the model must never generate)."""
    import torch
    from trl import GRPOConfig

    bf16 = cfg.bf16 if cfg.bf16 is not None else bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in {f.name for f in fields(GRPOConfig)} else "gradient_checkpointing"
    names = [n for n, w in cfg.reward_weights.items() if w]
    return GRPOConfig(
        **{checkpointing: cfg.gradient_checkpointing},
        output_dir=cfg.out,
        num_generations=cfg.num_generations,
        learning_rate=cfg.learning_rate,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        max_tool_calling_iterations=cfg.max_tool_rounds,
        max_completion_length=cfg.max_completion_length,
        temperature=cfg.temperature,
        generation_kwargs={"suppress_tokens": suppress_tokens} if suppress_tokens else None,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        reward_weights=[cfg.reward_weights[n] for n in names] + [0.0],
        bf16=bf16,
        use_vllm=cfg.use_vllm,
        vllm_mode=cfg.vllm_mode,
        vllm_gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        logging_steps=cfg.logging_steps,
        save_strategy=cfg.save_strategy,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        seed=cfg.seed,
        report_to=cfg.report_to,
        deepspeed=cfg.deepspeed,
        use_cpu=not torch.cuda.is_available(),
    )


def reward_funcs(cfg: GRPORunConfig) -> list:
    """The weighted rewards of ``cfg`` (in ``grpo_args``' order), then the tool-usage logger (weight 0)."""
    return [REWARDS[n] for n, w in cfg.reward_weights.items() if w] + [ToolUsage()]


def lora_config(cfg: GRPORunConfig):
    """PEFT's ``LoraConfig`` of a run, or ``None`` without ``lora``."""
    if not cfg.lora:
        return None
    from peft import LoraConfig

    return LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=cfg.lora_targets, task_type="CAUSAL_LM")


def save_checkpoint(trainer: Any, cfg: GRPORunConfig) -> Path:
    """Save the weights (or LoRA adapter) with the processor and its tool-aware chat template."""
    import shutil

    from iad_agent.training.sft import PROCESSOR_FILES

    out = Path(cfg.out)
    trainer.save_model(str(out))
    if trainer.accelerator.is_main_process:
        base = Path(cfg.model)
        for name in PROCESSOR_FILES:  # the starting model's processor files, as it loads them ...
            (out / name).unlink(missing_ok=True)
            if (base / name).exists():
                shutil.copy2(base / name, out / name)
        # ... with the tool-aware template (same tokens for every conversation the hf policy sends)
        (out / "chat_template.jinja").write_text(trainer.processing_class.chat_template, encoding="utf-8")
        (out / "iad_grpo_config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n", encoding="utf-8")
    return out


def train_grpo(cfg: GRPORunConfig, prepare: Callable[[Any], None] | None = None) -> dict[str, Any]:
    """Run GRPO end to end; returns the final metrics, the per-step log and the checkpoint path."""
    trainer = build_trainer(cfg)
    if prepare is not None:  # e.g. the CLI's progress callback in place of the trainer's printing
        prepare(trainer)
    result = trainer.train()
    out = save_checkpoint(trainer, cfg)
    metrics = dict(result.metrics)
    metrics["checkpoint"] = str(out)
    metrics["log_history"] = trainer.state.log_history
    return metrics

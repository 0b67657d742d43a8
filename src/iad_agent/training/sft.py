"""Supervised fine-tuning on trajectory datasets with TRL's ``SFTTrainer`` (AgentIAD / IndusAgent stage 1).

The dataset is the one ``iad trajectories build`` writes (``messages`` + ``images``), used as
TRL expects it, with TRL's own vision-language collator and ``assistant_only_loss``: the loss
covers only the model's turns (``<think>``, ``<tool_call>``, ``<answer>`` and the end-of-turn
token); the system prompt, the task, the images and every tool observation are masked, as
tool tokens are in verl / DeepEyes. The vision encoder is frozen (its merger / projector stays
trainable unless told otherwise), LoRA via PEFT is optional, and the checkpoint folder holds
the model's own processor files, so it loads directly into
:class:`~iad_agent.policies.hf.HFPolicy` (``iad inspect --policy hf --model <out>``).
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Processor files copied from the base model into every checkpoint (not the weights or config).
PROCESSOR_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
                   "merges.txt", "preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json",
                   "chat_template.jinja", "chat_template.json")

# The language model's linear layers (the vision tower's blocks are left out of LoRA).
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"


def _help(text: str, default: Any = MISSING, factory: Any = MISSING) -> Any:
    if factory is not MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


class YamlConfig:
    """``from_yaml`` / ``to_yaml`` for the run-config dataclasses (``kind`` names them in errors)."""

    kind = "run"

    @classmethod
    def from_yaml(cls, path: str | Path | None = None, **overrides: Any) -> YamlConfig:
        """Read a YAML mapping of field names (unknown keys are refused), then apply ``overrides``.

        Raises:
            ValueError: an unknown key or a YAML file that is not a mapping.
        """
        import yaml

        values: dict[str, Any] = {}
        if path is not None:
            loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
            if not isinstance(loaded, dict):
                raise ValueError(f"{path}: expected a YAML mapping of {cls.kind} settings")
            values.update(loaded)
        values.update({k: v for k, v in overrides.items() if v is not None})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown {cls.kind} setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
        return cls(**values)

    def to_yaml(self) -> str:
        """The settings as YAML with each field's help as a comment."""
        import yaml

        lines = []
        for f in fields(self):
            value = yaml.safe_dump(getattr(self, f.name), default_flow_style=True, width=1000).strip()
            value = value.removesuffix("...").strip()  # a plain scalar document ends with "..."
            lines += [f"# {f.metadata['help']}", f"{f.name}: {value}"]
        return "\n".join(lines) + "\n"



@dataclass
class SFTRunConfig(YamlConfig):
    """Everything ``iad train sft`` needs; loadable from YAML (:meth:`from_yaml`)."""

    kind = "SFT"

    model: str = _help("Folder of the base model (e.g. Qwen2.5-VL-3B-Instruct); never downloaded.", "")
    data: str = _help("Folder written by `iad trajectories build` (a datasets DatasetDict on disk).", "")
    out: str = _help("Output folder for the checkpoint (weights or LoRA adapter + processor).", "")
    train_split: str = _help("Split of the dataset to train on.", "train")
    eval_split: str | None = _help("Split to evaluate on every `eval_steps` (null: no evaluation).", None)
    lora: bool = _help("Train a LoRA adapter (PEFT) on the language model instead of all its weights.", False)
    lora_r: int = _help("LoRA rank.", 16)
    lora_alpha: int = _help("LoRA alpha (scale = alpha / r).", 32)
    lora_dropout: float = _help("LoRA dropout.", 0.05)
    lora_targets: str = _help("Regex of the modules LoRA adapts (default: the language model's linear layers).", LORA_TARGETS)
    merge_lora: bool = _help("Merge the adapter into the weights on save (a full checkpoint) instead of saving the adapter.", False)
    freeze_vision: bool = _help("Freeze the vision encoder (recommended; AgentIAD / IndusAgent recipes).", True)
    train_projector: bool = _help("Keep the vision-language merger / projector trainable when the encoder is frozen.", True)
    learning_rate: float = _help("Peak learning rate.", 2e-5)
    num_train_epochs: float = _help("Epochs over the training split.", 3.0)
    max_steps: int = _help("Stop after this many optimizer steps (-1: run all epochs).", -1)
    per_device_train_batch_size: int = _help("Trajectories per device per step.", 1)
    gradient_accumulation_steps: int = _help("Steps accumulated per optimizer update.", 8)
    warmup_steps: float = _help("Warm-up: steps, or a fraction of all steps when below 1.", 0.03)
    lr_scheduler_type: str = _help("Learning-rate schedule (transformers name).", "cosine")
    weight_decay: float = _help("AdamW weight decay.", 0.0)
    max_grad_norm: float = _help("Gradient clipping.", 1.0)
    max_length: int | None = _help("Truncate sequences to this many tokens (null: never; truncation can cut an image).", None)
    gradient_checkpointing: bool = _help("Recompute activations in the backward pass (less memory, ~30% slower).", True)
    bf16: bool | None = _help("bfloat16 mixed precision (null: on when a CUDA GPU supports it).", None)
    dtype: str = _help("Dtype to load the weights in: auto, float32, bfloat16.", "auto")
    attn_implementation: str | None = _help("Attention kernel: sdpa, eager, flash_attention_2 (null: the model's default).", None)
    logging_steps: int = _help("Log the loss every this many steps.", 10)
    save_strategy: str = _help("When to save intermediate checkpoints: steps, epoch or no.", "steps")
    save_steps: int = _help("Save an intermediate checkpoint every this many steps.", 500)
    save_total_limit: int = _help("Keep at most this many intermediate checkpoints.", 2)
    eval_steps: int = _help("Evaluate every this many steps (with eval_split).", 500)
    seed: int = _help("Random seed.", 42)
    report_to: list[str] = _help("Where to report metrics (none, tensorboard, wandb, ...).", factory=lambda: ["none"])
    deepspeed: str | None = _help("DeepSpeed JSON config (or use `accelerate launch --config_file ...`).", None)


_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _check(cfg: SFTRunConfig) -> None:
    if cfg.dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(_DTYPES)}, got {cfg.dtype!r}")
    for name in ("model", "data", "out"):
        if not getattr(cfg, name):
            raise ValueError(f"SFT needs `{name}` (a folder)")
    if not Path(cfg.model).is_dir():
        raise ValueError(f"{cfg.model}: model folder not found (weights are never downloaded)")
    if not (Path(cfg.data) / "dataset_dict.json").exists() and not (Path(cfg.data) / "state.json").exists():
        raise ValueError(f"{cfg.data}: not a dataset folder written by `iad trajectories build`")


def freeze_vision_tower(model: Any, train_projector: bool = True) -> int:
    """Freeze the vision encoder's parameters (keeping the merger trainable); returns how many were frozen."""
    frozen = 0
    for name, param in model.named_parameters():
        parts = name.split(".")
        if "visual" in parts or "vision_tower" in parts or "vision_model" in parts:
            if train_projector and "merger" in parts:
                continue
            param.requires_grad_(False)
            frozen += param.numel()
    return frozen


def load_data(cfg: SFTRunConfig):
    """``(train, eval or None)`` from the dataset folder."""
    from datasets import DatasetDict, load_from_disk

    data = load_from_disk(cfg.data)
    if not isinstance(data, DatasetDict):
        return data, None
    if cfg.train_split not in data:
        raise ValueError(f"{cfg.data}: no {cfg.train_split!r} split (has {', '.join(data)})")
    evaluation = None
    if cfg.eval_split:
        if cfg.eval_split not in data:
            raise ValueError(f"{cfg.data}: no {cfg.eval_split!r} split for evaluation (has {', '.join(data)})")
        evaluation = data[cfg.eval_split]
    return data[cfg.train_split], evaluation


def build_trainer(cfg: SFTRunConfig):
    """The configured ``trl.SFTTrainer`` (model, processor with a training chat template, data, LoRA)."""
    import torch
    from transformers import AutoModelForImageTextToText
    from trl import SFTConfig, SFTTrainer

    from iad_agent.training.processor import load_training_processor, training_chat_template

    _check(cfg)
    model_path = str(Path(cfg.model).resolve())  # a LoRA adapter records it as its base model
    train, evaluation = load_data(cfg)
    processor = load_training_processor(model_path)
    template = training_chat_template(processor, train[0]["messages"])
    if template is not None:
        processor.chat_template = template
    dtype = cfg.dtype if cfg.dtype == "auto" else getattr(torch, cfg.dtype)
    extra = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    model = AutoModelForImageTextToText.from_pretrained(model_path, dtype=dtype, local_files_only=True, **extra)
    if cfg.freeze_vision:
        log.info("froze %d vision-encoder parameters", freeze_vision_tower(model, cfg.train_projector))
    bf16 = cfg.bf16 if cfg.bf16 is not None else bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    # transformers 5 renamed gradient checkpointing to activation checkpointing (the old name warns).
    checkpointing = "activation_checkpointing" if "activation_checkpointing" in {f.name for f in fields(SFTConfig)} else "gradient_checkpointing"
    args = SFTConfig(
        **{checkpointing: cfg.gradient_checkpointing},
        output_dir=cfg.out,
        assistant_only_loss=True,
        max_length=cfg.max_length,
        learning_rate=cfg.learning_rate,
        num_train_epochs=cfg.num_train_epochs,
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.per_device_train_batch_size,
        per_device_eval_batch_size=cfg.per_device_train_batch_size,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        warmup_steps=cfg.warmup_steps,
        lr_scheduler_type=cfg.lr_scheduler_type,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        bf16=bf16,
        logging_steps=cfg.logging_steps,
        save_strategy=cfg.save_strategy,
        save_steps=cfg.save_steps,
        save_total_limit=cfg.save_total_limit,
        eval_strategy="steps" if evaluation is not None else "no",
        eval_steps=cfg.eval_steps,
        seed=cfg.seed,
        report_to=cfg.report_to,
        deepspeed=cfg.deepspeed,
        use_cpu=not torch.cuda.is_available(),
    )
    peft_config = None
    if cfg.lora:
        from peft import LoraConfig

        peft_config = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                                 target_modules=cfg.lora_targets, task_type="CAUSAL_LM")
    return SFTTrainer(model=model, args=args, train_dataset=train, eval_dataset=evaluation, processing_class=processor,
                      peft_config=peft_config)


def save_checkpoint(trainer: Any, cfg: SFTRunConfig) -> Path:
    """Save weights (or the adapter, or the merged model) plus the base model's own processor files."""
    out = Path(cfg.out)
    if cfg.lora and cfg.merge_lora:
        merged = trainer.model.merge_and_unload()
        if trainer.accelerator.is_main_process:
            merged.save_pretrained(out)
    else:
        trainer.save_model(str(out))
    if trainer.accelerator.is_main_process:
        # The trainer saved the training processor (training chat template, maybe the image-only
        # class); the checkpoint gets the base model's files so it loads exactly like the base.
        base = Path(cfg.model)
        for name in PROCESSOR_FILES:
            (out / name).unlink(missing_ok=True)
            if (base / name).exists():
                shutil.copy2(base / name, out / name)
        (out / "iad_sft_config.json").write_text(json.dumps(asdict(cfg), indent=1) + "\n", encoding="utf-8")
    return out


def train_sft(cfg: SFTRunConfig) -> dict[str, Any]:
    """Run SFT end to end; returns the trainer's final metrics plus the checkpoint path."""
    trainer = build_trainer(cfg)
    result = trainer.train()
    out = save_checkpoint(trainer, cfg)
    metrics = dict(result.metrics)
    metrics["checkpoint"] = str(out)
    return metrics

"""``iad train sft``: supervised fine-tuning of the agent's VLM on trajectories (TRL, optional LoRA)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from iad_agent.cli import app, console, fail

train_app = typer.Typer(no_args_is_help=True, help="Train the agent's vision-language model on trajectories.")
app.add_typer(train_app, name="train")


def _overrides(items: list[str]) -> dict:
    import yaml

    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            fail(f"--set expects KEY=VALUE, got {item!r}")
        values[key.strip()] = yaml.safe_load(value)
    return values


@train_app.command("sft")
def sft_command(
    model: str = typer.Option(None, "--model", help="Folder of the base model, e.g. Qwen2.5-VL-3B-Instruct (never downloaded)."),
    data: Path = typer.Option(None, "--data", help="Folder written by `iad trajectories build`."),
    out: Path = typer.Option(None, "--out", help="Checkpoint folder (loads with `iad inspect --policy hf --model OUT`)."),
    lora: bool = typer.Option(None, "--lora/--full", help="Train a LoRA adapter instead of all language-model weights."),
    config: Path = typer.Option(None, "--config", help="YAML file of settings (see --print-config for every key)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    learning_rate: float = typer.Option(None, "--learning-rate", "--lr", help="Peak learning rate."),
    epochs: float = typer.Option(None, "--epochs", help="Epochs over the training split."),
    set_: list[str] = typer.Option([], "--set", help="Any other setting as KEY=VALUE (YAML value); repeatable."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resulting settings as commented YAML and exit."),
) -> None:
    """Fine-tune with TRL's SFTTrainer; loss only on the model's own turns (prompts and tool observations masked)."""
    from iad_agent.errors import MissingExtra
    from iad_agent.extras import require

    try:
        require("train", "trl", "peft", "datasets", "accelerate")
    except MissingExtra as exc:
        fail(str(exc))
    from iad_agent.training import SFTRunConfig, train_sft

    overrides = {"model": model, "data": str(data) if data else None, "out": str(out) if out else None, "lora": lora,
                 "max_steps": max_steps, "learning_rate": learning_rate, "num_train_epochs": epochs, **_overrides(set_)}
    try:
        cfg = SFTRunConfig.from_yaml(config, **overrides)
    except (OSError, ValueError, TypeError) as exc:
        fail(str(exc))
    if print_config:
        sys.stdout.write(cfg.to_yaml())
        return
    try:
        metrics = train_sft(cfg)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    console.print(f"[green]trained[/] {cfg.model} on {cfg.data} → {metrics['checkpoint']}", highlight=False)
    console.print(json.dumps({k: v for k, v in metrics.items() if k != "checkpoint"}), highlight=False)

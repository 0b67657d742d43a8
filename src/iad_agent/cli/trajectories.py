"""``iad trajectories build``: teacher trajectories (AgentIAD / Indus-CoT) as an SFT dataset."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from iad_agent.cli import app, console, fail

trajectories_app = typer.Typer(no_args_is_help=True, help="Build trajectory datasets for supervised fine-tuning.")
app.add_typer(trajectories_app, name="trajectories")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@trajectories_app.command("build")
def build_command(
    out: Path = typer.Option(..., "--out", help="Output folder (HF dataset, ShareGPT JSON, images, split, card)."),
    dataset: str = typer.Option("mvtec", "--dataset", help="Dataset reader: mvtec, loco, magnetic_tile, visa, mpdd, btad, ..."),
    root: Path = typer.Option(None, "--root", help="Dataset folder (default: <data root>/mvtec_ad for mvtec)."),
    style: str = typer.Option("all", "--style", help="perceptive, comparative, indus-cot, all, or weights such as "
                                                     "'perceptive:1,comparative:2'."),
    train_categories: str = typer.Option(None, "--train-categories", help="Comma-separated categories to build from (default: all)."),
    held_out_categories: str = typer.Option(None, "--held-out-categories", help="Categories kept for zero-shot evaluation "
                                                                                "(default: all others)."),
    normal_fraction: float = typer.Option(None, "--normal-fraction", min=0.01, max=0.99,
                                          help="Target share of normal trajectories (default: keep every sample)."),
    max_per_category: int = typer.Option(None, "--max-per-category", min=1, help="At most this many trajectories per category and split."),
    test_fraction: float = typer.Option(0.2, "--test-fraction", min=0.0, max=0.9, help="Share of each category's images held out as test."),
    normals_per_category: int = typer.Option(10, "--normals-per-category", min=1, help="Good training images registered per product."),
    jitter: float = typer.Option(0.1, "--jitter", min=0.0, max=0.5, help="Random shift / rescale of the zoom region (fraction of its size)."),
    margin: float = typer.Option(0.15, "--margin", min=0.0, max=2.0, help="Context added around the ground-truth box (fraction of its size)."),
    max_steps: int = typer.Option(6, "--max-steps", min=2, help="Turn budget written into the system prompt (as at inference)."),
    max_image_side: int = typer.Option(768, "--max-image-side", min=0, help="Downsize images as the VLM policy does at inference (0: keep)."),
    teacher_model: str = typer.Option(None, "--teacher-model", help="Teacher VLM that rewrites the reasoning (OpenAI-compatible)."),
    teacher_url: str = typer.Option(None, "--teacher-url", help="Its endpoint, e.g. http://127.0.0.1:8000/v1."),
    seed: int = typer.Option(0, "--seed", help="Seeds the split, selection, styles and phrasing."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into a non-empty output folder."),
    format_: str = typer.Option("sft", "--format", help="sft: teacher trajectories; rl-prompts: prompts + ground truth "
                                                        "for `iad train grpo`."),
    mmad: Path = typer.Option(None, "--mmad", help="rl-prompts from MMAD's question file (mmad.json) instead of --dataset."),
    mmad_root: Path = typer.Option(None, "--mmad-root", help="Folder the MMAD image keys and templates are relative to."),
    split_file: Path = typer.Option(None, "--split", help="Reuse this split.json (e.g. the SFT dataset's) for rl-prompts."),
) -> None:
    """Build trajectories with the real tools and a ground-truth teacher (or RL prompts); export them for TRL."""
    from iad_agent.datasets import DatasetError, data_root
    from iad_agent.errors import MissingExtra
    from iad_agent.extras import require
    from iad_agent.product import RegistrationError

    try:
        require("train", "datasets")
        if teacher_model:
            require("vlm", "openai")
    except MissingExtra as exc:
        fail(str(exc))
    from iad_agent.trajectories import BuildConfig, build, parse_style_weights
    from iad_agent.trajectories.export import save

    if out.exists() and any(out.iterdir()) and not overwrite:
        fail(f"{out} is not empty; pass --overwrite to write into it")
    if format_ not in ("sft", "rl-prompts"):
        fail(f"--format must be sft or rl-prompts, got {format_!r}")
    if format_ == "sft" and (mmad or split_file):
        fail("--mmad and --split apply to --format rl-prompts")
    if format_ == "rl-prompts":
        _rl_prompts(out, dataset, root, train_categories, held_out_categories, normal_fraction, max_per_category, test_fraction,
                    normals_per_category, max_steps, max_image_side, seed, mmad, mmad_root, split_file)
        return
    try:
        styles = parse_style_weights(style)
        if root is None:
            root = data_root() / {"mvtec": "mvtec_ad", "loco": "mvtec_loco"}.get(dataset, dataset)
    except (ValueError, DatasetError) as exc:
        fail(str(exc))
    reasoner = None
    if teacher_model:
        from iad_agent.trajectories.reasoner import VLMReasoner

        reasoner = VLMReasoner(teacher_model, base_url=teacher_url)
    config = BuildConfig(dataset=dataset, root=str(root), train_categories=_names(train_categories),
                         held_out_categories=_names(held_out_categories), styles=styles, normal_fraction=normal_fraction,
                         max_per_category=max_per_category, test_fraction=test_fraction,
                         normals_per_category=normals_per_category, jitter=jitter, margin=margin, max_steps=max_steps,
                         seed=seed)
    try:
        with _progress() as progress:
            task = progress.add_task("building trajectories", total=None)
            result = build(config, reasoner=reasoner,
                           progress=lambda done, total, what: progress.update(task, completed=done, total=total,
                                                                              description=f"trajectories ({what})"))
        counts = save(result, out, command=shlex.join(["iad", *sys.argv[1:]]), max_image_side=max_image_side or None)
    except (ValueError, DatasetError, RegistrationError, FileNotFoundError) as exc:
        fail(str(exc))
    split = result.split
    console.print(f"[green]built[/] {sum(counts.values())} trajectories ({', '.join(f'{k} {v}' for k, v in counts.items())}) "
                  f"from {', '.join(split.train_categories)}; held out: {', '.join(split.held_out_categories) or 'none'} → {out}",
                  highlight=False)
    for reason, n in result.skipped.items():
        console.print(f"  [yellow]left out[/] {n}: {reason}", highlight=False)
    console.print(f"  load with datasets.load_from_disk({str(out)!r}); card: {out / 'README.md'}", highlight=False)


def _rl_prompts(out: Path, dataset: str, root: Path | None, train_categories: str | None, held_out_categories: str | None,
                normal_fraction: float | None, max_per_category: int | None, test_fraction: float, normals_per_category: int,
                max_steps: int, max_image_side: int, seed: int, mmad: Path | None, mmad_root: Path | None,
                split_file: Path | None) -> None:
    from iad_agent.datasets import DatasetError, data_root
    from iad_agent.trajectories import BuildConfig
    from iad_agent.trajectories import rl_prompts

    command = shlex.join(["iad", *sys.argv[1:]])
    try:
        with _progress() as progress:
            task = progress.add_task("RL prompts", total=None)
            tick = lambda done, total: progress.update(task, completed=done, total=total)  # noqa: E731
            if mmad is not None:
                if mmad_root is None:
                    fail("--mmad needs --mmad-root (the folder its image keys are relative to)")
                counts = rl_prompts.build_from_mmad(mmad, mmad_root, out, _names(train_categories), _names(held_out_categories),
                                                    test_fraction, seed, max_steps=max_steps,
                                                    max_image_side=max_image_side or None, command=command, progress=tick)
            else:
                if root is None:
                    root = data_root() / {"mvtec": "mvtec_ad", "loco": "mvtec_loco"}.get(dataset, dataset)
                split = rl_prompts.load_split_file(split_file) if split_file else None
                config = BuildConfig(dataset=dataset, root=str(root), train_categories=_names(train_categories),
                                     held_out_categories=_names(held_out_categories), normal_fraction=normal_fraction,
                                     max_per_category=max_per_category, test_fraction=test_fraction,
                                     normals_per_category=normals_per_category, max_steps=max_steps, seed=seed)
                counts = rl_prompts.build_from_dataset(config, out, max_image_side or None, split, command, tick)
    except (ValueError, DatasetError, FileNotFoundError) as exc:
        fail(str(exc))
    console.print(f"[green]built[/] {sum(counts.values())} RL prompts ({', '.join(f'{k} {v}' for k, v in counts.items())}) → {out}",
                  highlight=False)
    console.print(f"  train with: iad train grpo --model CKPT --data {out} --out CKPT_GRPO", highlight=False)

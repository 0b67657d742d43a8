"""Folder batches: ``iad inspect DIR`` (wired from ``cli/inspect.py``) and ``iad batch`` (local or Ray).

Exit status (for scripts on a line): 0 = every part inspected and normal, 1 = at least one part
anomalous, 2 = usage error (nothing inspected), 3 = no part anomalous but some image could not be
inspected or got no answer. The summary goes to stdout (with ``--json``, one JSON object per
image instead), progress and problems to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from iad_agent.cli import app, console, fail

WORKSPACE = typer.Option(None, "--workspace", help="Folder of registered products (default $IAD_WORKSPACE, else ~/.iad).")


#: From this many images on, the packaged backbone runs on torch (see :func:`engine_for`).
MANY_IMAGES = 16


def engine_for(n_images: int) -> None:
    """Many images repay importing torch (~2 s): its convolutions use every thread ``--threads``
    allows, numpy's element-wise layers one. One image or a few run on numpy (a cold start
    without torch). The packaged backbone's engine ``auto`` takes torch once it is loaded; both
    give the same features up to float rounding."""
    if n_images >= MANY_IMAGES:
        import torch  # noqa: F401


def is_folder_input(images: list[Path]) -> bool:
    """Whether ``iad inspect`` was given a folder or a glob pattern rather than image files."""
    return any(p.is_dir() or (not p.exists() and set("*?[") & set(str(p))) for p in images)


def _bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), console=console, transient=True)


def _open_outputs(paths: list[Path | None], resume: bool) -> list:
    from iad_agent.scale.folder import ResultFile

    outputs = []
    try:
        for path in paths:
            if path is not None:
                outputs.append(ResultFile(path, resume=resume))
    except BaseException:
        for out in outputs:
            out.close()
        raise
    return outputs


def _finish(tally, outputs: list, as_json: bool) -> None:
    for out in outputs:
        out.close()
    if not as_json:
        typer.echo(tally.summary())
        for out in outputs:
            typer.echo(f"results: {out.path}")
    for image in tally.anomalous_images[:20]:
        console.print(f"[bold red]anomalous:[/] {image}", highlight=False)
    if len(tally.anomalous_images) > 20:
        console.print(f"… and {len(tally.anomalous_images) - 20} more anomalous (see the results)", highlight=False)
    raise typer.Exit(tally.exit_code)


def _start(images: list[Path], out: Path | None, jsonl: Path | None, resume: bool) -> tuple[list[Path], list]:
    """The images of a folder batch and its open results files (exits with a usage error)."""
    from iad_agent.scale.folder import BatchError, find_images

    if resume and out is None and jsonl is None:
        fail("--resume continues a results file: give --out results.csv and/or --jsonl results.jsonl")
    try:
        return find_images(images), _open_outputs([out, jsonl], resume)
    except BatchError as exc:
        fail(str(exc))
        raise  # fail exits; for type checkers


def inspect_folder(images: list[Path], *, product: str | None, normals: Path | None, workspace: Path | None,
                   resolved, max_steps: int, out: Path | None, jsonl: Path | None, resume: bool, as_json: bool,
                   heatmap_dir: Path | None = None) -> None:
    """``iad inspect DIR|GLOB ... [--out results.csv] [--jsonl results.jsonl] [--resume]`` (exits)."""
    from iad_agent import api
    from iad_agent.scale.folder import inspect_to_files

    files, outputs = _start(images, out, jsonl, resume)
    engine_for(len(files))
    try:
        if normals is not None:
            prod = api.register(api.one_off_name(normals), normals, allow_mixed_sizes=True, save=False)
        else:
            prod = api.load_product(product, workspace)
    except api.IADError as exc:
        for o in outputs:
            o.close()
        fail(str(exc), 3 if isinstance(exc, api.ProductError) else 2)
    with _bar() as bar:
        task = bar.add_task(f"inspecting {len(files)} images", total=len(files))

        def on_row(row: dict, full: dict) -> None:
            bar.advance(task)
            if row["error"]:
                console.print(f"[bold red]error:[/] {row['error']}", highlight=False)
            elif as_json:  # the whole object of each image, as `iad inspect --json` prints it
                sys.stdout.write(json.dumps(full, ensure_ascii=False) + "\n")
                sys.stdout.flush()

        tally = inspect_to_files(files, prod, resolved, outputs, heatmap_dir=heatmap_dir, max_steps=max_steps,
                                 progress=on_row)
    _finish(tally, outputs, as_json)


def inspect_zero_shot(images: list[Path], *, product_name: str | None, out: Path | None, jsonl: Path | None,
                      resume: bool, as_json: bool, heatmap_dir: Path, match_brightness: bool = True) -> None:
    """``iad inspect DIR --zero-shot [--product-name NAME] [--out/--jsonl ...] [--resume] [--keep-brightness]`` (exits).

    The whole batch is scored together (each image against the others), so with ``--resume``
    every image is scored again and only those not yet in the results files are written.
    """
    from iad_agent.scale.folder import Tally, heatmap_name, result_row
    from iad_agent.zeroshot import ZeroShotError, inspect_paths

    files, outputs = _start(images, out, jsonl, resume)
    name = product_name or (images[0].name if images[0].is_dir() else images[0].parent.name) or "batch"
    try:
        with _bar() as bar:
            tasks: dict[str, int] = {}

            def on_progress(phase: str, done: int, total: int) -> None:
                if phase not in tasks:
                    label = {"light": f"measuring the light of {total} images", "features": f"reading {total} images",
                             "scoring": "scoring each against the others"}[phase]
                    tasks[phase] = bar.add_task(label, total=total)
                bar.update(tasks[phase], completed=done)

            outcomes = inspect_paths(files, name, progress=on_progress, match_brightness=match_brightness)
    except ZeroShotError as exc:
        for o in outputs:
            o.close()
        fail(str(exc))
    heatmap_dir.mkdir(parents=True, exist_ok=True)
    tally, unwritten = Tally(), 0
    for outcome in outcomes:
        if outcome.ok:
            try:
                outcome.result.save_heatmap(heatmap_dir / heatmap_name(outcome.image))
            except OSError as exc:
                unwritten += 1
                console.print(f"[bold red]error:[/] {outcome.image}: heat map not written ({exc})", highlight=False)
            full = outcome.result.to_dict()
            row = result_row(outcome.image, full)
        else:
            full, row = {"image": outcome.image, "error": outcome.error}, result_row(outcome.image, error=outcome.error)
            console.print(f"[bold red]error:[/] {outcome.error}", highlight=False)
        for o in outputs:
            if outcome.image in o.done:
                continue
            o.write(row, full)
        tally.add(row)
        if as_json:
            sys.stdout.write(json.dumps(full, ensure_ascii=False) + "\n")
            sys.stdout.flush()
    for w in next((o.result.warnings for o in outcomes if o.ok), []):
        console.print(f"[yellow]warning:[/] {w}", highlight=False)
    brightness = next((o.result.brightness for o in outcomes if o.ok), None)
    if brightness is not None:
        console.print(f"brightness: matched to mean {brightness[0]:.0f}, std {brightness[1]:.0f} (the batch's light "
                      "varies; --keep-brightness leaves images as they are)", highlight=False)
    try:
        _finish(tally, outputs, as_json)
    except typer.Exit as done:  # a heat map that could not be written is a failure (3) unless a part is anomalous
        raise typer.Exit(3 if unwritten and done.exit_code == 0 else done.exit_code) from None


@app.command()
def batch(
    inputs: list[Path] = typer.Argument(..., help="Folders (searched recursively), glob patterns or image files."),
    product: str = typer.Option(..., "--product", help="A registered product."),
    out: Path = typer.Option(..., "--out", help="Results file: .parquet, .csv or .jsonl."),
    jsonl: Path = typer.Option(None, "--jsonl", help="Also write the full JSON object of each image here."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run: images already in the results are skipped."),
    engine: str = typer.Option("local", "--engine", help="local (this process) or ray (a Ray Data actor pool)."),
    address: str = typer.Option(None, "--address", help="Ray: address of an existing cluster (e.g. ray://head:10001 or auto); default: start a local Ray."),
    actors: int = typer.Option(None, "--actors", min=1, help="Ray: actors, each with the product loaded (default: one per CPU)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1, help="Ray: images per map_batches call."),
    workspace: Path = WORKSPACE,
    policy: str = typer.Option("embedded", "--policy", help="embedded (default), knn, embedded-no-<tool>, embedded+<tool>."),
    max_steps: int = typer.Option(6, "--max-steps", min=1, help="Hard budget of policy turns."),
    heatmaps: Path = typer.Option(None, "--heatmaps", help="Write each image's heat map into this folder."),
) -> None:
    """Inspect a folder of images into one results file, on this machine or over Ray."""
    from iad_agent import api
    from iad_agent.scale.folder import BatchError, find_images, inspect_to_files

    if engine not in ("local", "ray"):
        fail(f"--engine must be local or ray, not {engine!r}")
    try:
        resolved = api.resolve_policy(policy)
        files = find_images(inputs)
        api.product_version(product, workspace)  # an unknown product fails here, naming the registered ones
    except api.IADError as exc:
        fail(str(exc))
    if engine == "ray":
        from iad_agent.scale.ray_engine import run_ray

        try:
            outputs = _open_outputs([out, jsonl], resume)
            with _bar() as bar:
                task = bar.add_task(f"inspecting {len(files)} images on Ray", total=len(files))
                tally = run_ray(files, product, outputs, workspace=workspace, policy=policy, address=address,
                                actors=actors, batch_size=batch_size, max_steps=max_steps, heatmap_dir=heatmaps,
                                progress=lambda row, full: bar.advance(task))
        except (BatchError, api.IADError) as exc:
            fail(str(exc))
        _finish(tally, outputs, False)
    engine_for(len(files))
    try:
        outputs = _open_outputs([out, jsonl], resume)
        prod = api.load_product(product, workspace)
    except api.IADError as exc:
        fail(str(exc))
    with _bar() as bar:
        task = bar.add_task(f"inspecting {len(files)} images", total=len(files))
        tally = inspect_to_files(files, prod, resolved, outputs, heatmap_dir=heatmaps, max_steps=max_steps,
                                 progress=lambda row, full: bar.advance(task))
    _finish(tally, outputs, False)

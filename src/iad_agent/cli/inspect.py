"""``iad register``, ``iad inspect`` (``iad products`` is in ``cli/products.py``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from iad_agent.cli import app, batch, console, fail
from iad_agent.cli import options as opts

WORKSPACE = typer.Option(None, "--workspace", help="Folder of registered products (default $IAD_WORKSPACE, else ~/.iad).")


def _progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console, transient=True)


@app.command()
def register(
    name: str = typer.Argument(..., help="Product name, e.g. hazelnut."),
    normals: Path = typer.Option(None, "--normals", help="Folder of good images (added to the product if it exists)."),
    defects: Path = typer.Option(None, "--defects", help="Folder with one subfolder of example images per defect type."),
    priors: Path = typer.Option(None, "--priors", help="JSON file {\"good\": text, \"<defect type>\": text}."),
    workspace: Path = WORKSPACE,
    fpr: float = typer.Option(0.05, "--fpr", min=0.001, max=0.5, help="False-alarm rate the threshold is set for, on good parts."),
    backbone: str = opts.BACKBONE,
    layers: str = opts.LAYERS,
    resolution: int = typer.Option(256, help="Input resolution of the feature extractor (new products only)."),
    allow_mixed_sizes: bool = typer.Option(False, "--allow-mixed-sizes", help="Accept good images of different sizes."),
) -> None:
    """Register (or extend) a product from good images; sets its threshold from them alone."""
    from iad_agent import api

    if normals is None and defects is None and priors is None:
        fail("nothing to register: give --normals DIR (and optionally --defects DIR, --priors FILE)")
    try:
        with _progress() as progress:
            task = progress.add_task(f"registering {name}", total=None)
            product = api.register(name, normals, workspace=workspace, defects=defects, priors=priors, fpr=fpr,
                                   backbone=backbone, resolution=resolution, layers=opts.layers(layers),
                                   allow_mixed_sizes=allow_mixed_sizes,
                                   progress=lambda done, total: progress.update(task, completed=done, total=total))
    except (api.RegistrationError, api.ProductError) as exc:
        fail(str(exc))
    cal = product.bank.calibration
    console.print(f"[green]registered[/] {name}: {len(product.bank)} good images, threshold {cal.threshold:.4f} "
                  f"(false-alarm rate {cal.fpr:g}, {cal.method}), {len(product.defects.types)} defect examples, "
                  f"{len(product.priors)} priors → {product.folder}")


@app.command()
def inspect(
    images: list[Path] = typer.Argument(..., help="Image(s) to inspect."),
    product: str = typer.Option(None, "--product", help="A registered product."),
    normals: Path = typer.Option(None, "--normals", help="One-off: folder of good images instead of a registered product."),
    workspace: Path = WORKSPACE,
    policy: str = typer.Option("embedded", "--policy", help="embedded (default, CPU), knn, openai, hf; also "
                               "embedded-no-<tool> and embedded+<tool> as in `iad eval`."),
    base_url: str = opts.BASE_URL,
    model: str = opts.MODEL,
    api_key_env: str = opts.API_KEY_ENV,
    timeout: float = opts.TIMEOUT,
    max_retries: int = opts.MAX_RETRIES,
    native_tools: bool = opts.NATIVE_TOOLS,
    max_image_side: int = opts.MAX_IMAGE_SIDE,
    adapter: str = opts.ADAPTER,
    dtype: str = opts.DTYPE,
    device: str = opts.DEVICE,
    temperature: float = opts.TEMPERATURE,
    max_new_tokens: int = opts.MAX_NEW_TOKENS,
    max_steps: int = typer.Option(6, "--max-steps", min=1, help="Hard budget of policy turns."),
    disable_tool: list[str] = typer.Option([], "--disable-tool", help="Tool to leave out (repeatable)."),
    report: Path = typer.Option(None, "--report", help="Write a self-contained HTML report here."),
    heatmap: Path = typer.Option(None, "--heatmap", help="Heat-map PNG path (default: next to the report, else <image>_heatmap.png in the current folder)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per image."),
    out: Path = typer.Option(None, "--out", help="Folder batch: write one CSV row per image here."),
    jsonl: Path = typer.Option(None, "--jsonl", help="Folder batch: write each image's JSON object here."),
    resume: bool = typer.Option(False, "--resume", help="Folder batch: continue the results files, skipping images already in them."),
) -> None:
    """Inspect image(s), folders or glob patterns: verdict, score vs threshold, box, heat map, defect type and trace."""
    from iad_agent import api
    from iad_agent.report import save_heatmap, save_report

    if (product is None) == (normals is None):
        fail("give exactly one of --product NAME (registered) or --normals DIR (one-off)")
    if len(images) > 1 and report is not None:
        fail("--report takes one image; inspect several images without --report or one at a time")
    options = opts.vlm_options(base_url=base_url, model=model, api_key_env=api_key_env, timeout=timeout,
                               max_retries=max_retries, native_tools=native_tools, max_image_side=max_image_side,
                               adapter=adapter, dtype=dtype, device=device, temperature=temperature,
                               max_new_tokens=max_new_tokens)
    try:
        resolved = api.resolve_policy(policy, disable_tool, options)  # a bad name fails before any work
    except api.IADError as exc:
        fail(str(exc))
    if out is not None or jsonl is not None or resume or batch.is_folder_input(images):
        batch.inspect_folder(images, product=product, normals=normals, workspace=workspace, resolved=resolved,
                             max_steps=max_steps, out=out, jsonl=jsonl, resume=resume, as_json=as_json)
    try:
        if normals is not None:
            with _progress() as progress:
                task = progress.add_task("reading the good images", total=None)
                prod = api.register(api.one_off_name(normals), normals, allow_mixed_sizes=True, save=False,
                                    progress=lambda done, total: progress.update(task, completed=done, total=total))
        else:
            prod = api.load_product(product, workspace)
        outcomes = api.inspect_many(images, prod, resolved, max_steps=max_steps)
    except api.IADError as exc:
        fail(str(exc))
    failures = 0
    for outcome in outcomes:
        image = outcome.image
        if not outcome.ok:
            console.print(f"[bold red]error:[/] {outcome.error}", highlight=False)
            failures += 1
            continue
        result = outcome.result
        hm = heatmap if heatmap and len(images) == 1 else None
        if hm is None:
            hm = (report.with_name(report.stem + "_heatmap.png") if report else Path.cwd() / f"{image.stem}_heatmap.png")
        save_heatmap(result, hm)
        if report is not None:
            save_report(result, report)
        d = result.to_dict()
        if as_json:
            sys.stdout.write(json.dumps(d) + "\n")
        else:
            verdict = {True: "[bold red]ANOMALOUS[/]", False: "[bold green]NORMAL[/]", None: "[yellow]NO ANSWER[/]"}[d["anomaly_present"]]
            console.print(f"{image}: {verdict} score {d['score']:.4f} (threshold {d['threshold']:.4f}), box {d['box']}, "
                          f"defect {d['defect_type']}, confidence {d['confidence']}, {len(d['tool_calls'])} tool calls, "
                          f"{d['elapsed_ms']:.0f} ms", highlight=False)
            console.print(f"  {d['reason']}", highlight=False)
            for w in d["warnings"]:
                console.print(f"  [yellow]warning:[/] {w}", highlight=False)
            console.print(f"  heat map: {hm}" + (f", report: {report}" if report else ""), highlight=False)
    if failures:
        raise typer.Exit(1)

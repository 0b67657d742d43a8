"""``iad inspect``: images (or folders, see ``cli/batch.py``) against a product; results on stdout.

Per image, one verdict line (or with ``--json`` one JSON object) on stdout; progress, warnings
and errors on stderr. Heat maps and reports: ``cli/outputs.py``. Exit status: 0 every part
normal, 1 at least one anomalous, 2 usage error (nothing computed), 3 otherwise failed (an image
that could not be read, no answer, an output that could not be written).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.markup import escape

from iad_agent.cli import EXIT_ANOMALOUS, EXIT_FAILURE, EXIT_OK, app, batch, console, fail
from iad_agent.cli import options as opts
from iad_agent.cli.progress import phases, progress_bar
from iad_agent.cli.register import WORKSPACE


def verdict_line(d: dict) -> str:
    """The terminal line of one result: verdict, score as a share of the threshold, box, defect type.

    >>> verdict_line({"image": "a.png", "anomaly_present": True, "score": 59.2, "threshold": 48.2, "box": [0.41, 0.47, 0.59, 0.62],
    ...               "defect_type": "unknown", "defect_source": "descriptions", "confidence": 0.69, "tool_calls": [1, 2],
    ...               "elapsed_ms": 812.0})
    'a.png: ANOMALOUS, score 123% of the threshold (59.2 / 48.2), box [0.41, 0.47, 0.59, 0.62], defect type unknown (descriptions), confidence 0.69, 2 tool calls, 812 ms'
    """
    verdict = {True: "ANOMALOUS", False: "NORMAL", None: "NO ANSWER"}[d["anomaly_present"]]
    parts = [f"{d['image']}: {verdict}"]
    if d.get("threshold"):
        parts.append(f"score {d['score'] / d['threshold']:.0%} of the threshold ({d['score']:.4g} / {d['threshold']:.4g})")
    if d.get("box"):
        parts.append("box [" + ", ".join(f"{v:.2f}" for v in d["box"]) + "]")
    if d.get("defect_type"):
        source = d.get("defect_source")
        parts.append(f"defect type {d['defect_type']}" + (f" ({source})" if source else ""))
    if d.get("confidence") is not None:
        parts.append(f"confidence {d['confidence']:.2f}")
    n = len(d.get("tool_calls") or [])
    parts.append(f"{n} tool call{'s' * (n != 1)}")
    parts.append(f"{d['elapsed_ms']:.0f} ms")
    return ", ".join(parts)


def _echo_result(d: dict, heatmap: Path | None, report: Path | None) -> None:
    colour = {True: "red", False: "green", None: "yellow"}[d["anomaly_present"]]
    line = verdict_line(d)
    head, _, rest = line.partition(": ")
    verdict, _, tail = rest.partition(",")
    typer.echo(f"{head}: " + typer.style(verdict, fg=colour, bold=True) + ("," + tail if tail else ""))
    if d.get("reason"):
        typer.echo(f"  {d['reason']}")
    files = [f"heat map: {heatmap}" if heatmap else "", f"report: {report}" if report else ""]
    if any(files):
        typer.echo("  " + ", ".join(f for f in files if f))


@app.command()
def inspect(
    images: list[Path] = typer.Argument(..., metavar="IMAGE...", help="Image files, folders or glob patterns."),
    product: str = typer.Option(None, "--product", metavar="NAME", help="A registered product."),
    normals: Path = typer.Option(None, "--normals", metavar="DIR", help="One-off: folder of good images instead of a "
                                 "registered product (nothing is stored)."),
    workspace: Path = WORKSPACE,
    policy: str = typer.Option("embedded", "--policy", metavar="NAME", help="embedded (CPU), knn, openai, hf; also "
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
    max_steps: int = typer.Option(6, "--max-steps", min=1, metavar="N", help="Hard budget of policy turns."),
    disable_tool: list[str] = typer.Option([], "--disable-tool", metavar="TOOL", help="Tool to leave out."),
    out_dir: Path = typer.Option(None, "--out-dir", metavar="DIR", help="Folder for the heat maps (and, with several "
                                 "images, their reports).", show_default="a new folder per run, <workspace>/runs/…"),
    report: Path = typer.Option(None, "--report", metavar="FILE", help="Write a self-contained HTML report here; with "
                                "several images, an index page linking one report per image."),
    heatmap: Path = typer.Option(None, "--heatmap", metavar="FILE", help="Heat-map PNG path (one image only).",
                                 show_default="in --out-dir"),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per image."),
    out: Path = typer.Option(None, "--out", metavar="FILE", help="Folder batch: write one CSV (or .parquet) row per image here."),
    jsonl: Path = typer.Option(None, "--jsonl", metavar="FILE", help="Folder batch: write each image's JSON object here."),
    resume: bool = typer.Option(False, "--resume", help="Folder batch: continue the results files, skipping images already in them."),
    zero_shot: bool = typer.Option(False, "--zero-shot", help="No good images: score each image against the other "
                                   "images of the batch (one product, most parts good; at least 3 images)."),
    product_name: str = typer.Option(None, "--product-name", metavar="NAME", help="--zero-shot: the product's name "
                                     "in the answers.", show_default="the folder's name"),
    keep_brightness: bool = typer.Option(False, "--keep-brightness", help="--zero-shot: never match images to the "
                                         "batch's brightness (by default a batch whose light varies is seen at its "
                                         "median brightness and contrast)."),
) -> None:
    """Inspect images, folders or glob patterns: verdict, score vs threshold, box, heat map, defect type and trace."""
    from iad_agent import api
    from iad_agent.cli.outputs import Outputs
    from iad_agent.imageio import OutputPathError

    if zero_shot:
        if product is not None or normals is not None:
            fail("--zero-shot inspects without good images: give neither --product nor --normals "
                 "(--product-name NAME names the product in the answers)")
        if report is not None or heatmap is not None:
            fail("--zero-shot writes --out/--jsonl and heat maps into --out-dir, not --report/--heatmap")
        try:
            outputs = Outputs.checked(out_dir, None, None, True, workspace)
        except OutputPathError as exc:
            fail(str(exc))
        batch.inspect_zero_shot(images, product_name=product_name, out=out, jsonl=jsonl, resume=resume,
                                as_json=as_json, heatmap_dir=outputs.out_dir, match_brightness=not keep_brightness)
    if product_name is not None:
        fail("--product-name names the product of a --zero-shot batch; a registered product is --product NAME")
    if keep_brightness:
        fail("--keep-brightness is for a --zero-shot batch; a registered product's brightness is chosen at "
             "registration (`iad register --keep-brightness`)")
    if (product is None) == (normals is None):
        fail("give exactly one of --product NAME (registered) or --normals DIR (one-off), or --zero-shot")
    folder_mode = out is not None or jsonl is not None or resume or batch.is_folder_input(images)
    several = len(images) > 1 or folder_mode
    if heatmap is not None and several:
        fail("--heatmap names the heat map of one image; with several images give --out-dir DIR")
    if report is not None and folder_mode:
        fail("--report is for image files; a folder batch writes --out/--jsonl (and heat maps into --out-dir)")
    options = opts.vlm_options(base_url=base_url, model=model, api_key_env=api_key_env, timeout=timeout,
                               max_retries=max_retries, native_tools=native_tools, max_image_side=max_image_side,
                               adapter=adapter, dtype=dtype, device=device, temperature=temperature,
                               max_new_tokens=max_new_tokens)
    try:
        resolved = api.resolve_policy(policy, disable_tool, options)  # a bad name fails before any work
        outputs = Outputs.checked(out_dir, report, heatmap, several, workspace)
    except (api.IADError, OutputPathError) as exc:
        fail(str(exc))
    if folder_mode:
        batch.inspect_folder(images, product=product, normals=normals, workspace=workspace, resolved=resolved,
                             max_steps=max_steps, out=out, jsonl=jsonl, resume=resume, as_json=as_json,
                             heatmap_dir=outputs.out_dir)
    try:
        if normals is not None:
            with progress_bar() as bar:
                task = bar.add_task("reading the good images", total=None)
                prod = api.register(api.one_off_name(normals), normals, allow_mixed_sizes=True, save=False,
                                    progress=phases(bar, task, "reading the good images",
                                                    "calibrating on the good images"))
        else:
            prod = api.load_product(product, workspace)
        batch.engine_for(len(images))
        outcomes = api.inspect_many(images, prod, resolved, max_steps=max_steps)
    except api.ProductError as exc:
        fail(str(exc), EXIT_FAILURE)
    except api.IADError as exc:
        fail(str(exc))
    code = _report_outcomes(outcomes, outputs, as_json, images)
    raise typer.Exit(code)


def _report_outcomes(outcomes, outputs, as_json: bool, images: list[Path]) -> int:  # noqa: ANN001
    """Write each outcome's files and print its result as it comes; the exit status.

    The progress line (stderr) names the image being inspected, with the elapsed time: a VLM
    policy's turns can take a while.
    """
    from iad_agent.report import save_heatmap, save_report

    anomalous = failed = False
    with progress_bar() as bar:
        task = bar.add_task(f"inspecting {images[0].name}", total=len(images) if len(images) > 1 else None)
        for n, outcome in enumerate(outcomes, 1):
            image = Path(outcome.image)
            bar.update(task, completed=n, description=f"inspecting {images[n].name}" if n < len(images) else "done")
            if not outcome.ok:
                console.print(f"[bold red]error:[/] {escape(str(outcome.error))}", highlight=False)
                outputs.add_to_index(image, None, None, str(outcome.error))
                failed = True
                continue
            result = outcome.result
            hm = outputs.heatmap_path(image)
            if not outputs.write("heat map", hm, lambda p: save_heatmap(result, p)):
                hm = None
            rp = outputs.report_path(image)
            if rp is not None and not outputs.write("report", rp, lambda p: save_report(result, p)):
                rp = None
            d = result.to_dict()
            outputs.add_to_index(image, d, rp)
            anomalous |= d["anomaly_present"] is True
            failed |= d["anomaly_present"] is None
            if as_json:
                sys.stdout.write(json.dumps(d, ensure_ascii=False) + "\n")
            else:
                _echo_result(d, hm, rp)
            for w in d["warnings"]:
                console.print(f"  [yellow]warning:[/] {escape(w)}", highlight=False)
            sys.stdout.flush()
    outputs.write_index()
    for problem in outputs.problems:
        console.print(f"[bold red]error:[/] {escape(problem)}", highlight=False)
    if outputs.several and outputs.report is not None and not as_json:
        typer.echo(f"reports: {outputs.report}")
    return EXIT_ANOMALOUS if anomalous else EXIT_FAILURE if failed or outputs.problems else EXIT_OK

"""``iad products``: list the registered products; ``rm`` one; ``rm-images`` to drop good images.

Results go to stdout (a table, or ``--json`` for scripts), diagnostics and progress to stderr.
Nothing heavy is imported to list products (no torch, no faiss), so listing stays well under a
second.
"""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path

import typer

from iad_agent.cli import app, console, fail

products_app = typer.Typer(no_args_is_help=False, add_completion=False,
                           help="Registered products: list them (default), remove one (rm), remove good images (rm-images).")
app.add_typer(products_app, name="products")

WORKSPACE_HELP = "Folder of registered products (default $IAD_WORKSPACE, else ~/.iad)."


def _workspace(workspace: Path | None, ctx: typer.Context | None = None):
    from iad_agent.workspace import Workspace

    if workspace is None and ctx is not None and ctx.parent is not None:
        workspace = ctx.parent.params.get("workspace")
    return Workspace(workspace)


def _waiting(name: str):
    def say(holder: str) -> None:
        console.print(f"waiting for another registration of {name} ({holder}) to finish…", highlight=False)

    return say


def _when(iso: str | None) -> str:
    if not iso:
        return "-"
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%Y-%m-%d %H:%M")
    except ValueError:
        return iso


def _number(v) -> str:
    return "-" if v is None else f"{v:.4g}"


@products_app.callback(invoke_without_command=True)
def products(
    ctx: typer.Context,
    workspace: Path = typer.Option(None, "--workspace", help=WORKSPACE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list instead of a table (one object per product, "
                                 "with the paths of its good images)."),
) -> None:
    """List registered products: good images, threshold, false-alarm rate, defect types, dates."""
    if ctx.invoked_subcommand is not None:
        return
    ws = _workspace(workspace)
    rows = ws.summaries(good_images=as_json)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=1) + "\n")
    elif rows:
        from rich.console import Console
        from rich.table import Table

        table = Table(box=None, pad_edge=False, header_style="bold")
        for col, justify in (("product", "left"), ("good images", "right"), ("threshold", "right"), ("fpr", "right"),
                             ("defect types", "left"), ("registered", "left"), ("updated", "left")):
            table.add_column(col, justify=justify, no_wrap=col != "defect types")
        for r in rows:
            if "error" in r:
                table.add_row(r["name"], "-", "damaged", "-", "-", "-", "-")
                continue
            table.add_row(r["name"], str(r["images"]), _number(r["threshold"]), _number(r["fpr"]),
                          ", ".join(r["defect_types"] or []) or "-", _when(r["created"]), _when(r["updated"]))
        Console(file=sys.stdout, highlight=False, width=None if sys.stdout.isatty() else 160).print(table)
    for r in rows:
        if "error" in r:
            console.print(f"[yellow]warning:[/] product {r['name']} is damaged: {r['error']}; remove it with "
                          f"`iad products rm {r['name']} --yes` and register it again", highlight=False)
    if not rows:
        where = ws.root if ws.root.is_dir() else f"{ws.root} (the folder does not exist)"
        console.print(f"no products registered in {where}; register one with `iad register NAME --normals DIR`",
                      highlight=False)


@products_app.command("rm")
def rm(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The product to remove."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation (needed when not interactive)."),
    workspace: Path = typer.Option(None, "--workspace", help=WORKSPACE_HELP),
) -> None:
    """Remove a registered product (all its stored versions). Its good images are not touched."""
    from iad_agent.errors import IADError
    from iad_agent.product_files import read_summary

    ws = _workspace(workspace, ctx)
    try:
        if not ws.exists(name):
            known = ", ".join(ws.products()) or "none"
            fail(f"product {name!r} is not registered in {ws.root} (registered: {known})")
        if not yes:
            if not sys.stdin.isatty():
                fail(f"not removing product {name!r} without confirmation: pass --yes")
            info = read_summary(ws.product_dir(name))
            if not typer.confirm(f"remove product {name} ({info.get('images', '?')} good images) from {ws.root}?",
                                 default=False, err=True):
                console.print("not removed", highlight=False)
                raise typer.Exit(1)
        folder = ws.remove(name, on_wait=_waiting(name))
    except IADError as exc:
        fail(str(exc))
    typer.echo(f"removed product {name} ({folder})")


@products_app.command("rm-images")
def rm_images(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="The product."),
    paths: list[Path] = typer.Argument(..., metavar="PATH...", help="Good images to remove, by the path they were registered under."),
    workspace: Path = typer.Option(None, "--workspace", help=WORKSPACE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the result as JSON."),
) -> None:
    """Remove good images from a product: the memory is rebuilt from the stored features and the
    threshold recalibrated from the remaining images (the last one cannot be removed)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from iad_agent.errors import IADError

    ws = _workspace(workspace, ctx)
    try:
        with Progress(TextColumn("{task.description}"), BarColumn(), TimeElapsedColumn(), console=console, transient=True) as bar:
            task = bar.add_task(f"rebuilding {name}", total=2)
            reg = ws.remove_images(name, paths, on_wait=_waiting(name),
                                   progress=lambda done, total: bar.update(task, completed=done, total=total,
                                                                           description=f"recalibrating {name}"))
    except IADError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"{exc.filename or ws.root}: {exc.strerror or exc}")
    cal = reg.product.bank.calibration
    before = reg.limits.get("threshold", (cal.threshold, cal.threshold))[0]
    if as_json:
        sys.stdout.write(json.dumps({"product": name, "removed": reg.removed, "images": len(reg.product.bank),
                                     "threshold": cal.threshold, "threshold_before": before, "fpr": cal.fpr}) + "\n")
    else:
        typer.echo(f"removed {len(reg.removed)} good image{'s' * (len(reg.removed) != 1)} from {name}: now "
                   f"{len(reg.product.bank)}, threshold {before:.4g} → {cal.threshold:.4g} (false-alarm rate {cal.fpr:g})")

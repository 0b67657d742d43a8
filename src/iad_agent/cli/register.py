"""``iad register``: register or extend a product, re-set its false-alarm rate; say what changed.

One locked step through ``api.register_details`` (``Workspace.register``): the workspace and the
defects folder are checked before any image is read; images already registered are skipped
(running the same registration twice changes nothing); ``--fpr`` alone re-sets the threshold
from the stored held-out scores. The result goes to stdout, progress and warnings to stderr.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.markup import escape

from iad_agent.cli import EXIT_FAILURE, app, console, fail
from iad_agent.cli import options as opts
from iad_agent.cli.progress import phases, progress_bar

WORKSPACE = typer.Option(None, "--workspace", metavar="DIR", help="Folder of registered products.",
                         show_default="$IAD_WORKSPACE, else ~/.iad")


def plural(n: int, word: str) -> str:
    """``1 good image``, ``2 good images``.

    >>> plural(1, "good image"), plural(0, "defect example")
    ('1 good image', '0 defect examples')
    """
    return f"{n} {word}{'' if n == 1 else 's'}"


_LIMIT_WORDS = {"threshold": "threshold", "aligned_threshold": "position-wise threshold", "patch_threshold": "patch threshold",
                "zoom_threshold": "zoom limit", "compare_threshold": "comparison limit", "highfreq_threshold": "fine-detail limit"}


def describe(reg, name: str) -> list[str]:  # noqa: ANN001 - a Registration
    """What a registration did, in lines for the terminal."""
    product = reg.product
    cal = product.bank.calibration
    n = len(product.bank)
    summary = (f"threshold {cal.threshold:.4g} (false-alarm rate {cal.fpr:g}, {cal.method}), "
               f"{plural(len(product.defects.types), 'defect example')}, {plural(len(product.priors), 'prior')}")
    given = len(reg.added) + len(reg.skipped)
    if not reg.changed:
        already = (f"the {plural(given, 'given image')} {'is' if given == 1 else 'are'} already registered"
                   if given else "these settings are already stored")
        lines = [f"nothing new: {already}; {name} has {plural(n, 'good image')}, {summary}"]
        if reg.waited_for:
            lines.append(f"  (waited for another registration of {name}, {reg.waited_for})")
        return lines
    what = "registered" if reg.created else "updated"
    added = f" ({len(reg.added)} added)" if reg.added and not reg.created else ""
    lines = [f"{what} {name}: {plural(n, 'good image')}{added}, {summary} → {product.folder or reg.folder}"]
    brightness = product.bank.config.brightness
    if reg.created and brightness is not None:
        lines.append(f"  the good images' light varies: every image is seen at their median brightness "
                     f"(luminance mean {brightness[0]:.0f}, std {brightness[1]:.0f}; --keep-brightness leaves images as they are)")
    if reg.defects_added:
        lines.append(f"  {plural(reg.defects_added, 'defect example')} added ({', '.join(sorted(set(product.defects.types)))})")
    changed = [(k, v) for k, v in reg.limits.items() if v[0] is not None and k in _LIMIT_WORDS]
    if changed and not reg.created:
        lines.append("  " + ", ".join(f"{_LIMIT_WORDS[k]} {b:.4g} → {a:.4g}" for k, (b, a) in changed))
    if reg.skipped:
        lines.append(f"  {plural(len(reg.skipped), 'given image')} skipped:")
        for s in reg.skipped[:10]:
            same = f" ({s.same_as})" if s.same_as and s.same_as != str(Path(s.path).resolve()) else ""
            lines.append(f"    {s.path}: {s.reason}{same}")
        if len(reg.skipped) > 10:
            lines.append(f"    … and {len(reg.skipped) - 10} more")
    if reg.waited_for:
        lines.append(f"  (waited for another registration of {name}, {reg.waited_for}, and added to its result)")
    return lines


def as_dict(reg, name: str) -> dict:  # noqa: ANN001 - a Registration
    cal = reg.product.bank.calibration
    return {"product": name, "created": reg.created, "changed": reg.changed, "images": len(reg.product.bank),
            "threshold": round(cal.threshold, 6), "fpr": cal.fpr, "method": cal.method, "added": reg.added,
            "skipped": [{"path": s.path, "reason": s.reason, "same_as": s.same_as} for s in reg.skipped],
            "defects_added": reg.defects_added, "defect_types": reg.product.defect_types,
            "brightness": list(reg.product.bank.config.brightness) if reg.product.bank.config.brightness else None,
            "limits": {k: {"before": b, "after": a} for k, (b, a) in reg.limits.items()},
            "warnings": reg.warnings, "waited_for": reg.waited_for,
            "folder": str(reg.folder or reg.product.folder) if (reg.folder or reg.product.folder) else None}


@app.command()
def register(
    name: str = typer.Argument(..., metavar="NAME", help="Product name, e.g. hazelnut (letters, digits, _ - .)."),
    normals: Path = typer.Option(None, "--normals", metavar="DIR", help="Folder of good images (added to the product "
                                 "if it exists; images already registered are skipped)."),
    recursive: bool = typer.Option(False, "--recursive", "-r", help="Also take the good images in subfolders of --normals."),
    defects: Path = typer.Option(None, "--defects", metavar="DIR", help="Folder with one subfolder of example images per "
                                 "defect type (DIR/crack/*.png, ...)."),
    priors: Path = typer.Option(None, "--priors", metavar="FILE", help="JSON file {\"good\": text, \"<defect type>\": text}."),
    workspace: Path = WORKSPACE,
    fpr: float = typer.Option(None, "--fpr", min=0.001, max=0.5, metavar="RATE",
                              help="False-alarm rate on good parts the threshold is set for; alone, re-sets the "
                                   "threshold of a registered product from its stored scores.",
                              show_default="the stored rate; 0.05 for a new product"),
    backbone: str = opts.BACKBONE,
    layers: str = opts.LAYERS,
    resolution: int = typer.Option(256, metavar="PIXELS", help="Input resolution of the feature extractor (new products only)."),
    allow_mixed_sizes: bool = typer.Option(False, "--allow-mixed-sizes", help="Accept good images of different sizes."),
    keep_brightness: bool = typer.Option(False, "--keep-brightness", help="Never match images to the good images' "
                                         "brightness (new products only; by default a product whose good images vary "
                                         "in light sees every image at their median brightness and contrast)."),
    as_json: bool = typer.Option(False, "--json", help="Print what changed as one JSON object."),
) -> None:
    """Register (or extend) a product from good images; sets its threshold from them alone."""
    from iad_agent import api

    if normals is None and defects is None and priors is None and fpr is None:
        fail("nothing to register: give --normals DIR (and optionally --defects DIR, --priors FILE), or --fpr RATE "
             "to re-set the threshold of a registered product")

    def waiting(holder: str) -> None:
        console.print(escape(f"waiting for another registration of {name} ({holder}) to finish…"), highlight=False)

    try:
        with progress_bar() as bar:
            task = bar.add_task(f"registering {name}", total=None)
            reg = api.register_details(
                name, normals, workspace=workspace, defects=defects, priors=priors, fpr=fpr, recursive=recursive,
                backbone=backbone, resolution=resolution, layers=opts.layers(layers), allow_mixed_sizes=allow_mixed_sizes,
                match_brightness=not keep_brightness, on_wait=waiting,
                progress=phases(bar, task, f"registering {name}: reading good images",
                                f"registering {name}: calibrating the threshold and tool limits on held-out good images"))
    except api.ProductError as exc:
        fail(str(exc), EXIT_FAILURE)
    except api.IADError as exc:
        fail(str(exc))
    for warning in reg.warnings:
        console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    if as_json:
        sys.stdout.write(json.dumps(as_dict(reg, name)) + "\n")
    else:
        typer.echo("\n".join(describe(reg, name)))

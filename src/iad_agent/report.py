"""Heat-map images and the self-contained HTML report of an inspection.

The report shows the query, every tool call with its arguments, the images each tool returned
(zoomed crops, the retrieved good reference, the enhanced detail), the heat-map overlay with
the box, and the reasoning text — everything inline (data URLs), so the file can be mailed. The
page is the Jinja2 template ``templates/report.html`` (autoescaped), packaged with the code.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from iad_agent.imageio import atomic_write_text, data_url, save_png
from iad_agent.tools.retriever import ComparativeRetriever
from iad_agent.types import Box

if TYPE_CHECKING:
    import jinja2

    from iad_agent.inspector import InspectionResult


def colorize(heatmap: np.ndarray, vmin: float = 0.0, vmax: float | None = None) -> Image.Image:
    """A heat map as an RGB image (jet colormap), scaled to ``[vmin, vmax]``."""
    from matplotlib import colormaps  # only the HTML report draws colours; a heat-map PNG needs no matplotlib

    vmax = float(np.max(heatmap)) if vmax is None else vmax
    norm = np.clip((heatmap - vmin) / max(vmax - vmin, 1e-8), 0, 1)
    rgb = (colormaps["jet"](norm)[..., :3] * 255).astype(np.uint8)
    return Image.fromarray(rgb)


def overlay(image: Image.Image, heatmap: np.ndarray, vmax: float | None = None, box: Box | None = None, alpha: float = 0.45) -> Image.Image:
    """The image with the heat map blended over it and, optionally, the answer's box."""
    heat = colorize(heatmap, vmax=vmax).resize(image.size, Image.Resampling.BILINEAR)
    out = Image.blend(image.convert("RGB"), heat, alpha)
    if box is not None:
        draw = ImageDraw.Draw(out)
        w = max(2, round(max(out.size) / 200))
        draw.rectangle(box.to_pixels(*out.size), outline=(255, 255, 255), width=w)
    return out


def save_heatmap(result: InspectionResult, path: str | Path) -> None:
    """Write the pixel heat map as an 8-bit grayscale PNG: 128 = the threshold, 255 = twice it."""
    look = result.episode.look
    scaled = np.clip(result.heatmap / (2 * look.threshold) * 255, 0, 255).astype(np.uint8)
    save_png(Image.fromarray(scaled, mode="L"), path)
    result.heatmap_path = path


def _thumbnail_url(img: Image.Image, max_side: int = 384) -> str:
    return data_url(img, max_side=max_side, compress_level=1)  # lossless; several times faster than level 6


@functools.lru_cache(maxsize=4)
def _template(name: str) -> jinja2.Template:
    import jinja2  # here: writing a heat map (every `iad inspect`) needs no template engine

    env = jinja2.Environment(loader=jinja2.PackageLoader("iad_agent", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template(name)


def _reference_name(result: InspectionResult, index: int) -> str:
    paths = result.episode.product.bank.paths
    return Path(paths[index]).name if 0 <= index < len(paths) else f"#{index}"


def _call_images(result: InspectionResult, call, obs) -> tuple[list[dict], str | None]:  # noqa: ANN001
    """The images of one tool call with their captions, and a note about them (or ``None``).

    The comparative retriever crops the good reference at the query's image position; where
    the reference part lies or is shaped differently, the report shows its corresponding region
    instead (:mod:`iad_agent.alignment`) and says so.
    """
    captions = list(obs.image_captions) + [call.name] * (len(obs.images) - len(obs.image_captions))
    images = list(obs.images)
    note = None
    refs = obs.data.get("references") or []
    if call.name == ComparativeRetriever.name and refs:
        name = _reference_name(result, refs[0])
        box = obs.data.get("box")
        if box is not None and len(images) == 2:
            from iad_agent.alignment import corresponding_box
            from iad_agent.tools.zoom import OUTPUT_SIDE, crop

            product = result.episode.product
            region = Box.from_list(box)
            moved, agree = corresponding_box(result.episode.grid, product.bank.grids[refs[0]], region)
            if moved == region:
                captions[0] = f"good reference {name}, same region"
            else:
                images[0] = crop(product.reference_image(refs[0]), moved, OUTPUT_SIDE)
                captions[0] = f"good reference {name}, corresponding region"
                note = (f"The good part {name} lies or is shaped differently: at the query's image position it shows "
                        f"another spot, so the crop shown is the region whose surroundings match the query's "
                        f"({agree:.0%} of them agree). The comparison's numbers were measured at the same image "
                        "position (±1 feature cell), not on this region.")
        else:
            captions = [f"good reference {_reference_name(result, i)}" for i in refs[: len(images)]]
    return [{"url": _thumbnail_url(img), "caption": cap} for img, cap in zip(images, captions)], note


def render_html(result: InspectionResult) -> str:
    """The inspection as one self-contained HTML page (``templates/report.html``; images inline)."""
    d = result.to_dict()
    traj = result.trajectory
    look = result.episode.look
    box = Box.from_list(d["box"]) if d["box"] else None
    steps = []
    for step in traj.steps:
        calls = []
        for call, obs in zip(step.tool_calls, step.observations):
            images, note = _call_images(result, call, obs)
            fold = len(obs.text) > 300  # long prior texts: the start, and the whole text folded
            calls.append({"name": call.name, "arguments": json.dumps(call.arguments, ensure_ascii=False),
                          "text": obs.text[:200].rsplit(" ", 1)[0] + " …" if fold else obs.text,
                          "more": obs.text if fold else None, "images": images, "note": note})
        steps.append({"thought": step.thought, "raw_output": step.raw_output, "parse_errors": step.parse_errors, "calls": calls,
                      "answer": json.dumps(step.answer.to_dict(), ensure_ascii=False) if step.answer is not None else None})
    return _template("report.html").render(
        d=d,
        verdict={True: "anomalous", False: "normal", None: "none"}[d["anomaly_present"]],
        label={True: "ANOMALOUS", False: "NORMAL", None: "NO ANSWER"}[d["anomaly_present"]],
        box_text="[" + ", ".join(f"{v:.2f}" for v in d["box"]) + "]" if d["box"] else "none",
        query=_thumbnail_url(traj.query_image),
        overlay=_thumbnail_url(overlay(traj.query_image, result.heatmap, vmax=look.threshold * 1.5, box=box)),
        overlay_caption="heat map overlay with the box" if box is not None else "heat map overlay",
        references=[_thumbnail_url(ref) for ref in traj.references],
        steps=steps,
    )


def render_index(entries: list[dict]) -> str:
    """An index page of several inspections: per image its verdict, score, defect type and report link.

    Args:
        entries: ``{"image", "result" (the --json object or None), "error", "report" (relative link or None)}``.
    """
    rows = []
    for e in entries:
        d = e["result"] or {}
        verdict = {True: "anomalous", False: "normal", None: "none"}[d.get("anomaly_present")] if d else "error"
        share = f"{d['score'] / d['threshold']:.0%}" if d.get("threshold") else ""
        rows.append({"image": e["image"], "verdict": verdict, "share": share, "defect": d.get("defect_type") or "",
                     "report": e["report"], "error": e["error"] or ""})
    counts = {v: sum(r["verdict"] == v for r in rows) for v in ("anomalous", "normal", "none", "error")}
    return _template("index.html").render(rows=rows, counts=counts)


def save_report(result: InspectionResult, path: str | Path) -> None:
    atomic_write_text(path, render_html(result))

"""Heat-map images and the self-contained HTML report of an inspection.

The report shows the query, every tool call with its arguments, the images each tool returned
(zoomed crops, the retrieved good reference, the enhanced detail), the heat-map overlay with
the box, and the reasoning text — everything inline (data URLs), so the file can be mailed. The
page is the Jinja2 template ``templates/report.html`` (autoescaped), packaged with the code.
"""

from __future__ import annotations

import functools
import json
from typing import TYPE_CHECKING

import jinja2
import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from iad_agent.imageio import atomic_write_text, data_url, save_png
from iad_agent.types import Box

if TYPE_CHECKING:
    from pathlib import Path

    from iad_agent.inspector import InspectionResult


def colorize(heatmap: np.ndarray, vmin: float = 0.0, vmax: float | None = None) -> Image.Image:
    """A heat map as an RGB image (jet colormap), scaled to ``[vmin, vmax]``."""
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


@functools.lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.PackageLoader("iad_agent", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template("report.html")


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
            images = [{"url": _thumbnail_url(img), "caption": obs.image_captions[j] if j < len(obs.image_captions) else call.name}
                      for j, img in enumerate(obs.images)]
            calls.append({"name": call.name, "arguments": json.dumps(call.arguments), "text": obs.text, "images": images})
        steps.append({"thought": step.thought, "raw_output": step.raw_output, "parse_errors": step.parse_errors, "calls": calls,
                      "answer": json.dumps(step.answer.to_dict()) if step.answer is not None else None})
    return _template().render(
        d=d,
        verdict={True: "anomalous", False: "normal", None: "none"}[d["anomaly_present"]],
        label={True: "ANOMALOUS", False: "NORMAL", None: "NO ANSWER"}[d["anomaly_present"]],
        query=_thumbnail_url(traj.query_image),
        overlay=_thumbnail_url(overlay(traj.query_image, result.heatmap, vmax=look.threshold * 1.5, box=box)),
        references=[_thumbnail_url(ref) for ref in traj.references],
        steps=steps,
    )


def save_report(result: InspectionResult, path: str | Path) -> None:
    atomic_write_text(path, render_html(result))

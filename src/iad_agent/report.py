"""Heat-map images and the self-contained HTML report of an inspection.

The report shows the query, every tool call with its arguments, the images each tool returned
(zoomed crops, the retrieved good reference, the enhanced detail), the heat-map overlay with
the box, and the reasoning text — everything inline (base64), so the file can be mailed.
"""

from __future__ import annotations

import base64
import html
import io
import json
from typing import TYPE_CHECKING

import numpy as np
from matplotlib import colormaps
from PIL import Image, ImageDraw

from iad_agent.imageio import atomic_write_text, save_png
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


def _img_tag(img: Image.Image, caption: str, max_side: int = 384) -> str:
    thumb = img.copy()
    thumb.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    thumb.convert("RGB").save(buf, format="PNG", compress_level=1)  # lossless; several times faster than level 6
    data = base64.b64encode(buf.getvalue()).decode()
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.4em} .verdict{font-size:1.2em;padding:.5em 1em;border-radius:6px;display:inline-block}
.anomalous{background:#fde2e1;color:#8a1c16}.normal{background:#e3f6e5;color:#1d5e2a}.none{background:#eee}
figure{display:inline-block;margin:.3em;vertical-align:top}figcaption{font-size:.8em;color:#555;text-align:center}
img{max-width:384px;border:1px solid #ccc}.step{border-left:3px solid #88a;padding:.3em 1em;margin:1em 0}
code,pre{background:#f4f4f8;padding:.1em .3em;border-radius:3px;white-space:pre-wrap}
table{border-collapse:collapse}td,th{padding:.2em .8em;border-bottom:1px solid #ddd;text-align:left}
"""


def render_html(result: InspectionResult) -> str:
    """The inspection as one self-contained HTML page."""
    d = result.to_dict()
    traj = result.trajectory
    look = result.episode.look
    verdict = {True: "anomalous", False: "normal", None: "none"}[d["anomaly_present"]]
    label = {True: "ANOMALOUS", False: "NORMAL", None: "NO ANSWER"}[d["anomaly_present"]]
    box = Box.from_list(d["box"]) if d["box"] else None
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>Inspection of {html.escape(str(d['image']))}</title>",
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Inspection: {html.escape(str(d['image'] or 'query'))} — product <code>{html.escape(d['product'])}</code></h1>",
             f"<p class='verdict {verdict}'>{label}</p>",
             "<table>",
             f"<tr><th>score / threshold</th><td>{d['score']:.4f} / {d['threshold']:.4f}</td></tr>",
             f"<tr><th>box</th><td>{d['box']}</td></tr>",
             f"<tr><th>defect type</th><td>{html.escape(str(d['defect_type']))}</td></tr>",
             f"<tr><th>confidence</th><td>{d['confidence']}</td></tr>",
             f"<tr><th>policy</th><td>{html.escape(str(d['policy']))}</td></tr>",
             f"<tr><th>time</th><td>{d['elapsed_ms']:.0f} ms</td></tr></table>",
             f"<p><b>Reason.</b> {html.escape(d['reason'])}</p>"]
    for w in d["warnings"]:
        parts.append(f"<p>⚠ {html.escape(w)}</p>")
    parts.append("<h2>Query and heat map</h2>")
    parts.append(_img_tag(traj.query_image, "query"))
    parts.append(_img_tag(overlay(traj.query_image, result.heatmap, vmax=look.threshold * 1.5, box=box), "heat map overlay with box"))
    for i, ref in enumerate(traj.references):
        parts.append(_img_tag(ref, f"good reference {i + 1}"))
    parts.append("<h2>Trace</h2>")
    for i, step in enumerate(traj.steps):
        parts.append(f"<div class='step'><h3>Step {i + 1}</h3>")
        if step.thought:
            parts.append(f"<p><i>{html.escape(step.thought)}</i></p>")
        if step.raw_output is not None:
            parts.append(f"<details><summary>model output</summary><pre>{html.escape(step.raw_output)}</pre></details>")
        for err in step.parse_errors:
            parts.append(f"<p>⚠ {html.escape(err)}</p>")
        for call, obs in zip(step.tool_calls, step.observations):
            parts.append(f"<p>→ <code>{html.escape(call.name)}({html.escape(json.dumps(call.arguments))})</code></p>")
            parts.append(f"<p>{html.escape(obs.text)}</p>")
            for j, img in enumerate(obs.images):
                caption = obs.image_captions[j] if j < len(obs.image_captions) else call.name
                parts.append(_img_tag(img, caption))
        if step.answer is not None:
            parts.append(f"<p>Answer: <code>{html.escape(json.dumps(step.answer.to_dict()))}</code></p>")
        parts.append("</div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def save_report(result: InspectionResult, path: str | Path) -> None:
    atomic_write_text(path, render_html(result))

"""``iad dev``: helpers for developing iad-agent (a tiny test model, the packaged text embeddings)."""

from __future__ import annotations

from pathlib import Path

import typer

from iad_agent.cli import IADTyper, app, console, fail

dev_app = IADTyper(no_args_is_help=True, help="Developer helpers: a tiny test model, the packaged text embeddings.")
app.add_typer(dev_app, name="dev")


@dev_app.command("tiny-model")
def tiny_model(
    out: Path = typer.Argument(..., metavar="DIR", help="Folder to write the checkpoint into (must be empty or new)."),
    seed: int = typer.Option(0, "--seed", metavar="N", help="Seed of the random weights."),
) -> None:
    """Write a tiny random Qwen2.5-VL checkpoint (a few MB) that `--policy hf --model DIR` and
    `iad train sft/grpo --model DIR` load: for trying the VLM paths without real weights."""
    from iad_agent.errors import MissingExtra
    from iad_agent.extras import require

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        fail(f"{out}: exists and is not an empty folder; give a new folder")
    try:
        require("vlm", "transformers")
    except MissingExtra as exc:
        fail(str(exc))
    from iad_agent.testing import build_tiny_qwen2_5_vl

    with console.status("writing the tiny model"):
        path = build_tiny_qwen2_5_vl(out, seed=seed)
    typer.echo(f"tiny Qwen2.5-VL written to {path} (random weights: it loads and runs, it does not inspect well)")


@dev_app.command("text-embeddings")
def text_embeddings(
    out: Path = typer.Option(None, "--out", metavar="FILE", help="Where to write them.",
                             show_default="the package's data/text_embeddings.npz"),
) -> None:
    """Embed the evidence vocabulary and MMAD's defect descriptions with MiniLM (shipped with the
    package, so registering a product named after an MMAD category loads no language model)."""
    import io
    from importlib import resources

    import numpy as np

    from iad_agent.defect_types import PACKAGED, packaged_texts
    from iad_agent.imageio import atomic_write_bytes
    from iad_agent.tools.priors import embed_texts

    path = out or Path(str(resources.files("iad_agent") / "data" / PACKAGED))
    texts = packaged_texts()
    with console.status(f"embedding {len(texts)} texts"):
        vectors = embed_texts(texts).astype(np.float16)  # half the size; cosines change by < 1e-3
    buf = io.BytesIO()
    np.savez_compressed(buf, texts=np.array(texts, dtype=str), vectors=vectors)
    atomic_write_bytes(path, buf.getvalue())
    typer.echo(f"{len(texts)} texts embedded → {path}")


@dev_app.command("bench")
def bench(
    out: Path = typer.Option(None, "--out", metavar="FILE", help="Also write the figures here (JSON)."),
    category: str = typer.Option("hazelnut", "--category", metavar="NAME", help="MVTec AD category under the data root."),
    repeats: int = typer.Option(3, "--repeats", min=1, metavar="N", help="Runs of each short command (the median is kept)."),
    photos: int = typer.Option(4, "--photos", min=0, metavar="N",
                               help="Good images to register as 4000×3000 photos, then one inspected (0: skip)."),
) -> None:
    """Time the first hour: register 50 and 200 good images, one cold `iad inspect`, `iad products`;
    quiet and beside a busy process (register_s, cold_start_s, products_s); then N 4000×3000 photos
    registered and one inspected, with their peak memory (register_photos_s, inspect_photo_s)."""
    import json

    from iad_agent.datasets import data_root
    from iad_agent.eval.firsthour import run
    from iad_agent.imageio import atomic_write_text

    with console.status("timing") as status:
        figures = run(data_root(), category, repeats, progress=lambda what: status.update(f"timing: {what}"), photos=photos)
    text = json.dumps(figures, indent=1)
    if out is not None:
        atomic_write_text(out, text + "\n")
    typer.echo(text)

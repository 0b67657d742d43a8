"""Write built trajectories as training data: a Hugging Face dataset and a LLaMA-Factory ShareGPT file.

Both come from :meth:`Trajectory.to_messages`, the one rendering the agent uses at inference,
so training and inference see identical text. Every image (query, crops, references,
high-frequency views) is saved once as ``images/<sha1>.png``; messages refer to images by
position (``{"type": "image"}`` placeholders in order) and each row lists its image files.

Output folder::

    dataset_dict.json, train/, test/   datasets.load_from_disk(out) → DatasetDict with columns
                                       messages, images (+ metadata), what TRL's VLM SFT expects
    images/<sha1>.png                  every image once
    sharegpt_<split>.json              LLaMA-Factory ShareGPT ("conversations", "system", "images")
    dataset_info.json                  LLaMA-Factory dataset registry for the two files above
    trajectories.jsonl                 the full traces (tool calls, observation data, timings)
    split.json                         the category / image split (see ``splits``)
    README.md                          the dataset card
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

from PIL import Image

from iad_agent.imageio import atomic_write_bytes, atomic_write_text
from iad_agent.policies.vlm import DEFAULT_MAX_IMAGE_SIDE, fit_image
from iad_agent.trajectories.builder import BuildResult, BuiltTrajectory
from iad_agent.trajectories.card import dataset_card
from iad_agent.types import dumps, sample_to_dict

IMAGE_DIR = "images"


def image_file(image: Image.Image, out_dir: Path) -> str:
    """Save ``image`` as ``images/<sha1 of its pixels>.png`` once; return that relative path."""
    digest = hashlib.sha1(f"{image.mode}{image.size}".encode() + image.tobytes()).hexdigest()
    rel = f"{IMAGE_DIR}/{digest}.png"
    path = out_dir / rel
    if not path.exists():
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        atomic_write_bytes(path, buf.getvalue())
    return rel


def to_record(item: BuiltTrajectory, out_dir: Path, max_image_side: int | None = DEFAULT_MAX_IMAGE_SIDE) -> dict[str, Any]:
    """One dataset row: placeholder messages, image paths (relative to ``out_dir``) and metadata.

    Images are downsized exactly as the VLM policies downsize them at inference
    (``max_image_side``), so the model trains on the pixels it will see.
    """
    messages, images = [], []
    for message in item.trajectory.to_messages():
        content = []
        for part in message["content"]:
            if part["type"] == "image":
                image = part["image"]
                images.append(image_file(fit_image(image.convert("RGB") if image.mode != "RGB" else image, max_image_side), out_dir))
                content.append({"type": "image", "text": None})
            else:
                content.append({"type": "text", "text": part["text"]})
        messages.append({"role": message["role"], "content": content})
    sample, answer = item.sample, item.trajectory.answer
    return {
        "id": item.id,
        "messages": messages,
        "images": images,
        "category": sample.category,
        "dataset": sample.dataset,
        "source_image": str(sample.image_path),
        "label": int(sample.label),
        "defect_type": sample.defect_type,
        "box": answer.box.to_list() if answer and answer.box else None,
        "style": item.style,
        "split": item.split,
        "teacher": item.teacher,
        "tool_calls": [c.name for c in item.trajectory.tool_calls],
    }


def features():
    """The Arrow schema of the Hugging Face dataset (images decoded to PIL on access)."""
    from datasets import Features, Image as ImageFeature, List, Value

    part = {"type": Value("string"), "text": Value("string")}
    return Features({
        "id": Value("string"),
        "messages": List({"role": Value("string"), "content": List(part)}),
        "images": List(ImageFeature()),
        "category": Value("string"),
        "dataset": Value("string"),
        "source_image": Value("string"),
        "label": Value("int8"),
        "defect_type": Value("string"),
        "box": List(Value("float32")),
        "style": Value("string"),
        "split": Value("string"),
        "teacher": Value("string"),
        "tool_calls": List(Value("string")),
    })


def to_sharegpt(record: dict[str, Any]) -> dict[str, Any]:
    """LLaMA-Factory ShareGPT: ``<image>`` marks each image in place, observations are ``human`` turns.

    Tool observations stay user (``human``) turns, exactly as the agent renders them, so
    LLaMA-Factory's default masking (loss on ``gpt`` turns only) matches ours.
    """
    system, turns = "", []
    for message in record["messages"]:
        text = "".join("<image>" if p["type"] == "image" else p["text"] for p in message["content"])
        if message["role"] == "system":
            system = text
        else:
            turns.append({"from": "gpt" if message["role"] == "assistant" else "human", "value": text})
    return {"id": record["id"], "system": system, "conversations": turns, "images": record["images"]}


def save(result: BuildResult, out_dir: str | Path, command: str = "", max_image_side: int | None = DEFAULT_MAX_IMAGE_SIDE) -> dict[str, int]:
    """Write every format of the module docstring into ``out_dir``; returns rows per split.

    Args:
        result: what :func:`~iad_agent.trajectories.builder.build` returned.
        out_dir: the output folder (created).
        command: the command line that built it, for the dataset card.
        max_image_side: longer image side, as the VLM policy's ``max_image_side`` at inference.
    """
    from datasets import Dataset, DatasetDict

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = [to_record(item, out, max_image_side) for item in result.trajectories]
    splits = {name: [r for r in records if r["split"] == name] for name in ("train", "test")}
    splits = {name: rows for name, rows in splits.items() if rows or name == "train"}
    feats = features()
    # Image paths are made absolute for encoding; save_to_disk embeds the bytes, so the
    # Arrow files are self-contained and load from any working directory.
    hf = DatasetDict({
        name: Dataset.from_list([{**r, "images": [str(out / p) for p in r["images"]]} for r in rows], features=feats)
        for name, rows in splits.items()
    })
    hf.save_to_disk(str(out))
    registry = {}
    for name, rows in splits.items():
        atomic_write_text(out / f"sharegpt_{name}.json", json.dumps([to_sharegpt(r) for r in rows], ensure_ascii=False, indent=1))
        registry[f"iad_trajectories_{name}"] = {
            "file_name": f"sharegpt_{name}.json", "formatting": "sharegpt",
            "columns": {"messages": "conversations", "system": "system", "images": "images"},
        }
    atomic_write_text(out / "dataset_info.json", json.dumps(registry, indent=1))
    lines = []
    for item in result.trajectories:
        lines.append(dumps({"id": item.id, "style": item.style, "split": item.split, "teacher": item.teacher,
                            "sample": sample_to_dict(item.sample), **item.trajectory.to_dict()}))
    atomic_write_text(out / "trajectories.jsonl", "\n".join(lines) + "\n")
    result.split.save(out / "split.json")
    atomic_write_text(out / "README.md", dataset_card(result, records, command, max_image_side))
    return {name: len(rows) for name, rows in splits.items()}

"""RL prompt datasets (``iad trajectories build --format rl-prompts``): prompts + ground truth for GRPO.

GRPO needs no trajectories, only what the policy is asked and what a right answer is. Each row
holds

- ``prompt``: the conversation up to the model's first turn (system prompt with the tools'
  schemas, then the query image and the task), exactly as ``iad inspect --policy hf`` renders it
  (:func:`episode_prompt` is checked against the :class:`~iad_agent.inspector.Inspector` in the
  tests), with ``{"type": "image"}`` placeholders, and ``images`` (the query, downsized as at
  inference);
- the ground truth: ``label`` (0 normal, 1 anomalous), ``box`` (normalised box around the
  defect, or null), ``defect_type``;
- what the rollout environment needs to run the real tools: ``source_image`` (the query file),
  ``bank`` (the good images the product is registered from) and ``category``.

Rows come from any labelled dataset reader, split by category and image with the SFT data's
rule (:func:`~iad_agent.trajectories.splits.make_split`; ``split.json`` of an SFT dataset can
be reused as is), or from MMAD's official question file (label from the Anomaly Detection
answer, defect type from the Defect Classification answer, box from the mask when present,
bank = the first ``similar_templates``). Splits: ``train`` / ``test`` (images of the train
categories) and ``held_out`` (every image of the held-out categories, for zero-shot evaluation).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from iad_agent import prompts
from iad_agent.imageio import DEFAULT_MAX_SIDE, atomic_write_text, load_image
from iad_agent.policies.vlm import DEFAULT_MAX_IMAGE_SIDE, fit_image
from iad_agent.trajectories.splits import Split, make_split
from iad_agent.types import Box, Sample

PARTS = ("train", "test", "held_out")


def defect_types_of(category: str) -> list[str]:
    """The candidate defect types a product registered with MMAD's priors (and no examples) lists."""
    from iad_agent.tools.priors import domain_priors

    return [k for k in domain_priors(category) if k not in ("good", "normal")]


def episode_prompt(category: str, tool_specs: list[dict], max_steps: int, defect_types: list[str] | None = None,
                   text: str | None = None) -> list[dict[str, Any]]:
    """The prompt messages of an episode, as ``Inspector.episode`` writes them (image as a placeholder).

    Args:
        text: replaces the image placeholder with text (text mode: the global look in words).
    """
    types = defect_types_of(category) if defect_types is None else defect_types
    system = prompts.system_prompt(category, types, tool_specs, max_steps)
    first = [{"type": "text", "text": text}] if text is not None else [{"type": "image", "text": None}]
    return [{"role": "system", "content": [{"type": "text", "text": system}]},
            {"role": "user", "content": [*first, {"type": "text", "text": prompts.task_prompt(category)}]}]


def record(sample: Sample, part: str, bank: list[str], out_dir: Path, tool_specs: list[dict], max_steps: int,
           max_image_side: int | None, box: Box | None, row_id: str) -> dict[str, Any]:
    """One dataset row (see the module docstring)."""
    from iad_agent.trajectories.export import image_file

    query = fit_image(load_image(sample.image_path, DEFAULT_MAX_SIDE), max_image_side)
    return {
        "id": row_id,
        "prompt": episode_prompt(sample.category, tool_specs, max_steps),
        "images": [image_file(query, out_dir)],
        "category": sample.category,
        "dataset": sample.dataset,
        "source_image": str(Path(sample.image_path).resolve()),
        "bank": bank,
        "label": int(sample.label),
        "box": box.to_list() if box is not None else None,
        "defect_type": sample.defect_type if sample.is_anomalous else None,
        "split": part,
    }


def features():
    from datasets import Features, Image as ImageFeature, List, Value

    part = {"type": Value("string"), "text": Value("string")}
    return Features({
        "id": Value("string"),
        "prompt": List({"role": Value("string"), "content": List(part)}),
        "images": List(ImageFeature()),
        "category": Value("string"),
        "dataset": Value("string"),
        "source_image": Value("string"),
        "bank": List(Value("string")),
        "label": Value("int8"),
        "box": List(Value("float32")),
        "defect_type": Value("string"),
        "split": Value("string"),
    })


def held_out_banks(samples: list[Sample], split: Split, normals: int) -> dict[str, list[str]]:
    """A bank for each held-out category, by the rule of the train categories (evenly spaced good train images)."""
    banks = {}
    for cat in split.held_out_categories:
        cat_samples = sorted((s for s in samples if s.category == cat), key=lambda s: str(s.image_path))
        goods = [s for s in cat_samples if s.split == "train" and not s.is_anomalous] or [s for s in cat_samples if not s.is_anomalous]
        picks = np.unique(np.linspace(0, len(goods) - 1, min(normals, len(goods))).round().astype(int)) if goods else []
        banks[cat] = [str(Path(goods[int(i)].image_path).resolve()) for i in picks]
    return banks


def write(rows: list[dict[str, Any]], out: Path, split: Split | None, card: str) -> dict[str, int]:
    """Save rows as a ``DatasetDict`` (one split per part), ``split.json`` and the card; returns counts."""
    from datasets import Dataset, DatasetDict

    parts = {p: [r for r in rows if r["split"] == p] for p in PARTS}
    parts = {p: v for p, v in parts.items() if v or p == "train"}
    feats = features()
    data = DatasetDict({p: Dataset.from_list([{**r, "images": [str(out / i) for i in r["images"]]} for r in v], features=feats)
                        for p, v in parts.items()})
    data.save_to_disk(str(out))
    if split is not None:
        split.save(out / "split.json")
    atomic_write_text(out / "README.md", card)
    return {p: len(v) for p, v in parts.items()}


def _card(title: str, rows: list[dict[str, Any]], command: str, source: str) -> str:
    counts = Counter((r["split"], r["category"], "anomalous" if r["label"] else "normal") for r in rows)
    lines = "\n".join(f"| {s} | {c} | {lab} | {n} |" for (s, c, lab), n in sorted(counts.items()))
    return f"""# {title}

RL prompts for `iad train grpo` ({source}). Command: `{command}`

Columns: `prompt` (system prompt with the tools' schemas + query placeholder + task, exactly as
`iad inspect --policy hf` renders it), `images` (the query, downsized as at inference), ground
truth `label` / `box` / `defect_type`, and `source_image` / `bank` / `category` for the rollout
environment that runs the real tools. Load with `datasets.load_from_disk(<this folder>)`.

| split | category | label | prompts |
|---|---|---|---|
{lines}
"""


def build_from_dataset(config: Any, out: str | Path, max_image_side: int | None = DEFAULT_MAX_IMAGE_SIDE,
                       split: Split | None = None, command: str = "",
                       progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """RL prompts from a labelled dataset reader, split like the SFT data.

    Args:
        config: a :class:`~iad_agent.trajectories.builder.BuildConfig` (dataset, root, categories,
            test fraction, bank size, max steps, seed; styles and mixes do not apply).
        split: reuse this split (e.g. an SFT dataset's ``split.json``) instead of drawing one.
    """
    from iad_agent.datasets import load_dataset
    from iad_agent.trajectories.builder import inference_tools, select_samples

    import random

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    samples = load_dataset(config.dataset, config.root)
    if split is None:
        split = make_split(samples, config.dataset, config.root, config.train_categories, config.held_out_categories,
                           config.test_fraction, config.seed, config.normals_per_category)
    specs = [t.spec() for t in inference_tools(config.anomaly_map_tool).values()]
    banks = {c: [str(p.resolve()) for p in split.bank_paths(c)] for c in split.train_categories}
    banks.update(held_out_banks(samples, split, split.normals_per_category))
    rng = random.Random(config.seed)
    todo: list[tuple[Sample, str]] = []
    for cat in split.train_categories + split.held_out_categories:
        for part in ("train", "test") if cat in split.train_categories else ("held_out",):
            keys = set(getattr(split, part).get(cat, []))
            pool = [s for s in samples if s.category == cat and split.key(s.image_path) in keys
                    and str(Path(s.image_path).resolve()) not in banks[cat]]
            todo += [(s, part) for s in select_samples(pool, config.normal_fraction, config.max_per_category, rng)]
    rows = []
    for i, (sample, part) in enumerate(todo):
        if progress:
            progress(i, len(todo))
        box = sample.ground_truth_box() if sample.is_anomalous else None
        rows.append(record(sample, part, banks[sample.category], out, specs, config.max_steps, max_image_side, box,
                           split.key(sample.image_path)))
    if progress:
        progress(len(todo), len(todo))
    return write(rows, out, split, _card(f"RL prompts ({config.dataset})", rows, command, f"{config.dataset} at {config.root}"))


def _type_from_answer(conversation: list[dict[str, Any]]) -> tuple[int | None, str | None]:
    label, kind = None, None
    for q in conversation:
        answer = q.get("Options", {}).get(q.get("Answer"), "")
        if q.get("type") == "Anomaly Detection":
            label = 0 if answer.strip().lower().startswith("no") else 1
        elif q.get("type") == "Defect Classification":
            kind = "_".join(re.findall(r"[a-z0-9]+", answer.lower())) or None
    return label, kind


def build_from_mmad(question_file: str | Path, image_root: str | Path, out: str | Path,
                    train_categories: list[str] | None = None, held_out_categories: list[str] | None = None,
                    test_fraction: float = 0.2, seed: int = 0, n_templates: int = 1, max_steps: int = 6,
                    max_image_side: int | None = DEFAULT_MAX_IMAGE_SIDE, command: str = "",
                    progress: Callable[[int, int], None] | None = None) -> dict[str, int]:
    """RL prompts from MMAD's question file (``mmad.json``; schema in ``eval/mmad.py``).

    Raises:
        ValueError: an unreadable question file, a record without templates, or a missing image.
    """
    from iad_agent.eval.mmad import _product_name, _templates, load_questions
    from iad_agent.trajectories.builder import inference_tools

    out, root = Path(out), Path(image_root)
    out.mkdir(parents=True, exist_ok=True)
    questions = load_questions(Path(question_file))
    samples, banks = [], {}
    for key, item in sorted(questions.items()):
        label, kind = _type_from_answer(item["conversation"])
        refs = _templates(item)[:n_templates]
        if not refs:
            raise ValueError(f"{question_file}: record {key!r} has no similar_templates or random_templates")
        if not (root / key).exists():
            raise ValueError(f"{root / key}: image of MMAD record {key!r} not found under --mmad-root")
        mask = _mask_path(root, key, item.get("mask_path"))
        sample = Sample(root / key, _product_name(key), int(label if label is not None else "good" not in key),
                        kind if label else None, mask, dataset="mmad", split="test")
        samples.append(sample)
        banks[str(sample.image_path)] = [str((root / r).resolve()) for r in refs]
    split = make_split(samples, "mmad", root, train_categories, held_out_categories, test_fraction, seed, normals_per_category=0)
    specs = [t.spec() for t in inference_tools(True).values()]
    rows = []
    for i, sample in enumerate(samples):
        if progress:
            progress(i, len(samples))
        part = split.part_of(sample)
        if part not in PARTS:
            continue
        box = sample.ground_truth_box() if sample.is_anomalous and sample.mask_path is not None else None
        rows.append(record(sample, part, banks[str(sample.image_path)], out, specs, max_steps, max_image_side, box,
                           split.key(sample.image_path)))
    return write(rows, out, split, _card("RL prompts (MMAD)", rows, command, f"MMAD questions {question_file}"))


def _mask_path(root: Path, key: str, mask: str | None) -> Path | None:
    """MMAD's ``mask_path`` is relative to the data root or to the image's category folder."""
    if not mask:
        return None
    parts = Path(key).parts
    for candidate in (root / mask, root.joinpath(*parts[:2]) / mask, root.joinpath(*parts[:-3]) / mask if len(parts) > 3 else None):
        if candidate is not None and candidate.exists():
            return candidate
    return None


def load_split_file(path: str | Path) -> Split:
    """A ``split.json`` written by ``iad trajectories build`` (SFT or RL prompts)."""
    try:
        return Split.load(path)
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise ValueError(f"{path}: not a split.json written by `iad trajectories build` ({exc})") from exc

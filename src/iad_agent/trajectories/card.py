"""The dataset card (``README.md`` of a trajectory dataset): counts, how it was built, how to use it."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from iad_agent.trajectories.builder import BuildResult

LICENCES = {
    "mvtec": "MVTec AD images: CC BY-NC-SA 4.0 (non-commercial, share-alike, attribution to MVTec Software GmbH).",
    "loco": "MVTec LOCO AD images: CC BY-NC-SA 4.0 (non-commercial, share-alike, attribution to MVTec Software GmbH).",
    "kolektor": "KolektorSDD images: CC BY-NC-SA 4.0.",
    "magnetic_tile": "Magnetic Tile Defect images: research use, cite Huang et al., The Visual Computer 2020.",
    "deeppcb": "DeepPCB images: MIT licence (Tang et al., arXiv 2019).",
}


def _table(records: list[dict[str, Any]], key: str) -> str:
    counts = Counter((r[key], r["split"], "anomalous" if r["label"] else "normal") for r in records)
    values = sorted({k for k, _, _ in counts})
    lines = [f"| {key} | train normal | train anomalous | test normal | test anomalous |", "|---|---|---|---|---|"]
    for v in values:
        cells = [counts[(v, s, lab)] for s in ("train", "test") for lab in ("normal", "anomalous")]
        lines.append(f"| {v} | " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def dataset_card(result: BuildResult, records: list[dict[str, Any]], command: str = "", max_image_side: int | None = None) -> str:
    """Markdown card listing counts per category / style / label / split and the build settings."""
    cfg = result.config
    split = result.split
    n_images = len({p for r in records for p in r["images"]})
    per_split = Counter(r["split"] for r in records)
    teachers = Counter(r["teacher"] for r in records)
    defects = Counter((r["category"], r["defect_type"] or "good") for r in records)
    skipped = "\n".join(f"- {k}: {v}" for k, v in result.skipped.items()) or "- none"
    settings = "\n".join(f"  - `{k}`: `{v}`" for k, v in asdict(cfg).items())
    defect_lines = "\n".join(f"| {c} | {d} | {n} |" for (c, d), n in sorted(defects.items()))
    licence = LICENCES.get(cfg.dataset, "see the licence of the source dataset")
    held = ", ".join(split.held_out_categories) or "none"
    return f"""---
license: other
task_categories:
- image-text-to-text
tags:
- anomaly-detection
- agent
- trajectories
---

# Inspection trajectories ({cfg.dataset}: {", ".join(split.train_categories)})

Multi-turn tool-use trajectories for supervised fine-tuning of a vision-language inspection
agent, in the styles of AgentIAD (*perceptive*: zoom; *comparative*: zoom + nearest good
reference) and IndusAgent's Indus-CoT (*indus-cot*: normalcy priors + zoom + high-frequency
enhancement for fine-grained defects). Built by `iad trajectories build`: a teacher policy that
knows the ground truth drives the real tools through the agent loop, so every observation is
a real tool output and the conversations are rendered exactly as at inference.

{("Command: `" + command + "`") if command else ""}

## Contents

- {len(records)} trajectories: {per_split.get("train", 0)} train, {per_split.get("test", 0)} test; {n_images} distinct images in `images/`.
- Reasoning text: {teachers.get("template", 0)} from templates, {teachers.get("vlm", 0)} written by a teacher VLM.
- Held-out categories (never trained on; listed with their images in `split.json` for zero-shot evaluation): {held}.

### By category
{_table(records, "category")}

### By style
{_table(records, "style")}

### By defect type
| category | defect type | trajectories |
|---|---|---|
{defect_lines}

### Samples left out
{skipped}

## How it was built

- Split (`split.json`): by category (train vs held-out) and, inside the train categories, by
  image: a stratified {cfg.test_fraction:.0%} of each (label, defect type) group is the `test`
  split. Each category's product was registered from {cfg.normals_per_category} evenly spaced
  good training images (the `bank` part of the split; never used as samples).
- Anomalous samples: the teacher zooms on the box around the ground-truth mask, grown by
  {cfg.margin:.0%} context and jittered by up to {cfg.jitter:.0%}; the answer carries the exact
  ground-truth box and defect type. Normal samples: it zooms on the most suspicious region of
  the normal-bank heat map and clears it.
- Images were downsized to a longer side of at most {max_image_side or "(no limit)"} px, as the VLM
  policies do at inference (`max_image_side`).
- Settings:
{settings}

## Formats

- Hugging Face `datasets` (`datasets.load_from_disk(<this folder>)` → `DatasetDict`): column
  `messages` (role + content parts; `{{"type": "image"}}` placeholders in the order of the
  `images` column) and `images` (decoded to PIL), plus metadata (`category`, `label`,
  `defect_type`, `box`, `style`, `split`, `teacher`, `tool_calls`, `source_image`). This is
  what TRL's `SFTTrainer` expects for vision-language models.
- LLaMA-Factory ShareGPT: `sharegpt_train.json` / `sharegpt_test.json` registered in
  `dataset_info.json` (`dataset_dir` = this folder); `<image>` marks each image in place and
  image paths are relative to this folder.
- `trajectories.jsonl`: full traces with the tools' numeric observations.

## Licence

{licence} The trajectories inherit the licence of the images they contain.
"""

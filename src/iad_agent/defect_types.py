"""Naming the defect type of an anomalous part, saying where the name comes from, or "unknown".

Two sources, and every answer says which one it used (``defect_source``):

* **labelled examples** (``iad register --defects DIR``): the anomaly signature of the query
  (the mean feature of its most anomalous patches) against each example's, by cosine;
* **descriptions** (the product's priors, e.g. MMAD's domain knowledge): the evidence in words
  (:func:`describe_evidence`) against each defect description, by MiniLM cosine.

A type is named only when its similarity is above a limit calibrated at registration from
evidence that is *not* that defect, the 95th percentile of its best similarities:

* for labelled examples, the held-out good images of the product, scored exactly as a query
  is (leave-one-out): a part that looks no more like a known defect than good parts do is
  ``unknown`` — a grid image inspected as a hazelnut is "anomalous, defect type unknown", not
  "crack (similarity 0.02)";
* for descriptions, synthetic evidence: every text the embedded policy can say. Its words come
  from a small fixed vocabulary (size, place, what the tools saw), so a description is chosen
  only when the evidence points at it more than nearly any evidence does. Measured on MVTec AD
  (hazelnut, transistor, bottle, grid; 8 images per defect type), naming by descriptions
  without that limit was right 13 times in 40, about as often as always answering the most
  frequent type, and it named one type per product whatever the defect; with the limit, it
  answers ``unknown`` there.

The vocabulary and MMAD's descriptions are embedded once and shipped with the package
(``data/text_embeddings.npz``); a product's own descriptions are embedded at registration and
stored with it. Naming a type from descriptions thus needs no language model at inspection
time; free text (a VLM's query) still loads MiniLM, once per process.
"""

from __future__ import annotations

import functools
import itertools
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from iad_agent.product import Product

UNKNOWN = "unknown"
EXAMPLES = "labelled examples"
DESCRIPTIONS = "descriptions"
#: Quantile of the not-a-defect evidence's best similarities that a named type must exceed.
NULL_QUANTILE = 0.95
#: The packaged embeddings (``iad_agent/data``).
PACKAGED = "text_embeddings.npz"

_SIZES = ("a tiny", "a small", "a large")
_PLACES = tuple(f"{v}{h}".strip() for v, h in itertools.product(("upper ", "lower ", ""), ("left", "right", "centre")))
_DETAIL = (None, "with thin sharp lines such as scratches or cracks", "smoother than normal, with missing texture or detail")
_SHAPE = "where a part is missing, misplaced or deformed compared with a good one"


def describe_evidence(centre: tuple[float, float], area: float, detail: str | None = None, shape: bool = False) -> str:
    """The visual evidence in words (matched against defect descriptions).

    Args:
        centre: ``(x, y)`` of the hot spot, normalized.
        area: share of the image above the per-patch normal level.
        detail: ``"sharp"`` (fine detail stronger than normal), ``"smooth"`` (weaker), or ``None``.
        shape: the region differs position by position from the nearest good part.

    >>> describe_evidence((0.5, 0.2), 0.01, "sharp")
    'a small anomalous region at the upper centre of the part, with thin sharp lines such as scratches or cracks'
    """
    cx, cy = centre
    where = ("upper " if cy < 0.33 else "lower " if cy > 0.66 else "") + ("left" if cx < 0.33 else "right" if cx > 0.66 else "centre")
    size = _SIZES[0] if area < 0.005 else _SIZES[1] if area < 0.05 else _SIZES[2]
    return _words(size, where.strip(), _DETAIL[{None: 0, "sharp": 1}.get(detail, 2)], shape)


def _words(size: str, place: str, detail: str | None, shape: bool) -> str:
    return ", ".join([f"{size} anomalous region at the {place} of the part"] + ([detail] if detail else []) + ([_SHAPE] if shape else []))


def evidence_vocabulary() -> list[str]:
    """Every text :func:`describe_evidence` can say (162 of them): the synthetic evidence that
    calibrates the descriptions' limit, embedded once for all products."""
    return [_words(*combo) for combo in itertools.product(_SIZES, _PLACES, _DETAIL, (False, True))]


@functools.lru_cache(maxsize=1)
def packaged_embeddings() -> dict[str, np.ndarray]:
    """MiniLM embeddings shipped with the package: the evidence vocabulary and MMAD's defect
    descriptions (``data/text_embeddings.npz``, written by ``iad dev text-embeddings``)."""
    path = Path(str(resources.files("iad_agent") / "data" / PACKAGED))
    if not path.is_file():
        return {}
    with np.load(path, allow_pickle=False) as z:
        return dict(zip((str(t) for t in z["texts"]), z["vectors"].astype(np.float32)))


def packaged_texts() -> list[str]:
    """What ``data/text_embeddings.npz`` holds: the vocabulary and every packaged MMAD description."""
    from iad_agent.tools.priors import clean_prior, domain_knowledge_path

    knowledge = json.loads(Path(domain_knowledge_path(packaged=True)).read_text(encoding="utf-8"))
    texts = evidence_vocabulary()
    for dataset in knowledge.values():
        for types in dataset.values():
            texts += [description_text(k, clean_prior(v)) for k, v in defect_descriptions(types).items()]
    return list(dict.fromkeys(texts))


def embed(texts: list[str]) -> np.ndarray:
    """L2-normalised MiniLM embeddings of ``texts``: the packaged ones where known, the model only for the rest."""
    known = packaged_embeddings()
    missing = [t for t in dict.fromkeys(texts) if t not in known]
    if missing:
        from iad_agent.tools.priors import embed_texts

        known = {**known, **dict(zip(missing, embed_texts(missing)))}
    return np.stack([known[t] for t in texts]).astype(np.float32)


def defect_descriptions(priors: dict[str, str]) -> dict[str, str]:
    """The defect-type descriptions of a product's priors (without the good part's)."""
    return {k: v for k, v in priors.items() if k not in ("good", "normal")}


def description_text(defect_type: str, text: str) -> str:
    """What is embedded for one description: ``"crack: a thin dark line ..."``."""
    return f"{defect_type.replace('_', ' ')}: {text}"


@dataclass
class TextIndex:
    """Stored MiniLM embeddings of a product's description and evidence texts, and the descriptions' limit.

    Attributes:
        texts: the embedded texts (descriptions as :func:`description_text`, then the vocabulary).
        vectors: their L2-normalised embeddings, ``(len(texts), d)``.
        min_similarity: a description must match the evidence better than this to name its
            type (calibrated on held-out good images); ``None`` when it could not be calibrated.
    """

    texts: list[str]
    vectors: np.ndarray
    min_similarity: float | None = None
    _rows: dict[str, int] = field(default_factory=dict, repr=False)

    def vector(self, text: str) -> np.ndarray | None:
        if not self._rows:
            self._rows = {t: i for i, t in enumerate(self.texts)}
        i = self._rows.get(text)
        return None if i is None else self.vectors[i]


def _good_looks(product: Product, max_images: int = 16):
    """``(grid, leave-one-out patch map)`` of held-out good images, as a query would be scored."""
    bank = product.bank
    n = len(bank)
    if n < 2:
        return
    for i in np.unique(np.linspace(0, n - 1, min(n, max_images)).round().astype(int)):
        grid = bank.grids[int(i)].astype(np.float32)
        yield grid, bank.patch_distances(grid, exclude=int(i))


def calibrate_examples(product: Product) -> float | None:
    """The similarity a labelled example must exceed: :data:`NULL_QUANTILE` of held-out good images' best.

    ``None`` (every anomaly gets its nearest example's type, as before) for a product with a
    single good image: nothing can be held out.
    """
    from iad_agent.product import anomaly_signature

    sigs = product.defects.signatures
    if sigs is None or not len(product.defects.types):
        return None
    best = [float((sigs @ anomaly_signature(grid, dmap)).max()) for grid, dmap in _good_looks(product)]
    return float(np.quantile(best, NULL_QUANTILE, method="higher")) if best else None


def build_text_index(product: Product, embed_fn=None) -> TextIndex | None:  # noqa: ANN001 - texts -> vectors
    """Embed the descriptions of ``product`` with the evidence vocabulary and calibrate the descriptions' limit.

    The limit is the :data:`NULL_QUANTILE` of the best similarity each text of the vocabulary
    (any evidence the policy can describe) reaches among the descriptions: a type is named only
    when the evidence points at its description more than nearly all evidence does. Embeddings
    come from the package where known (MMAD's descriptions), from a stored index with the same
    texts, else from MiniLM (``embed_fn``, default :func:`embed`). ``None`` without descriptions.
    """
    descriptions = defect_descriptions(product.priors)
    if not descriptions:
        return None
    texts = [description_text(k, v) for k, v in descriptions.items()] + evidence_vocabulary()
    old: TextIndex | None = getattr(product, "text_index", None)
    vectors = old.vectors if old is not None and old.texts == texts else np.asarray((embed_fn or embed)(texts), np.float32)
    docs, vocabulary = vectors[: len(descriptions)], vectors[len(descriptions):]
    best = (vocabulary @ docs.T).max(axis=1)
    return TextIndex(texts, vectors, float(np.quantile(best, NULL_QUANTILE, method="higher")))


def text_index_of(product: Product) -> TextIndex | None:
    """The product's text index; built (and kept on the loaded product, not stored) for a product
    registered before it was stored — from the packaged embeddings, so only a product with its own
    descriptions loads MiniLM, once."""
    if product.text_index is None and not product.defects.types and defect_descriptions(product.priors):
        product.text_index = build_text_index(product)
    return product.text_index


@dataclass
class DefectNaming:
    """The defect type of an anomalous part and where it came from.

    Attributes:
        defect_type: the type, :data:`UNKNOWN` when nothing is close enough, ``None`` when the
            product has neither examples nor descriptions.
        source: :data:`EXAMPLES`, :data:`DESCRIPTIONS` or ``None``.
        candidates: ``{defect_type, similarity, source}`` of the best matches, best first.
        min_similarity: the calibrated limit the best match had to exceed.
    """

    defect_type: str | None = None
    source: str | None = None
    candidates: list[dict] = field(default_factory=list)
    min_similarity: float | None = None

    def sentence(self) -> str:
        """The naming in words, for the reason line."""
        if self.source is None:
            return ""
        best = self.candidates[0] if self.candidates else None
        examples = self.source == EXAMPLES
        if best is None:
            return f"Defect type unknown: no {'labelled example' if examples else 'defect description'} to compare with."
        sim, limit = best["similarity"], self.min_similarity
        if examples:
            bar = f"; good parts reach {limit:.2f}" if limit is not None else ""
            if self.defect_type == UNKNOWN:
                return (f"Defect type unknown: the closest labelled example ({best['defect_type']}) matches only {sim:.2f}"
                        f"{bar}, so the defect is like none of the examples.")
            return f"Defect type {self.defect_type}: the closest labelled example (similarity {sim:.2f}{bar})."
        bar = f"{limit:.2f}" if limit is not None else "-"
        if self.defect_type == UNKNOWN:
            return (f"Defect type unknown: the closest defect description ({best['defect_type']}) matches the evidence "
                    f"{sim:.2f}, not above the {bar} that nearly any evidence reaches, so the words do not point at one defect.")
        limit_text = f"; nearly all other evidence stays below {bar}" if limit is not None else ""
        return f"Defect type {self.defect_type}: its description matches the evidence best (similarity {sim:.2f}{limit_text})."


def _naming(ranked: list[tuple[str, float]], source: str, limit: float | None) -> DefectNaming:
    candidates = [{"defect_type": t, "similarity": round(float(s), 4), "source": source} for t, s in ranked[:3]]
    if not candidates:
        return DefectNaming(UNKNOWN, source, [], limit)
    named = candidates[0]["similarity"] > limit if limit is not None else True
    return DefectNaming(candidates[0]["defect_type"] if named else UNKNOWN, source, candidates, limit)


def name_from_examples(product: Product, signature: np.ndarray) -> DefectNaming | None:
    """The nearest labelled example's type, if close enough; ``None`` when the product has no examples."""
    if product.defects.signatures is None or not product.defects.types:
        return None
    ranked = [(c["defect_type"], c["similarity"]) for c in product.defects.classify(signature, top=3)]
    return _naming(ranked, EXAMPLES, product.defects.min_similarity)


def name_from_descriptions(matches: list[list], limit: float | None) -> DefectNaming:
    """The best-matching description's type from the prior retriever's ``[type, similarity]`` matches."""
    ranked = [(t, float(s)) for t, s in matches if s is not None]
    return _naming(ranked, DESCRIPTIONS, limit)


def refresh(product: Product) -> None:
    """Re-calibrate what names defect types after a registration changed ``product`` (in place).

    Labelled examples get their similarity limit; without them, a product whose defects are
    described (and whose gate names types from descriptions) gets its text index — embedded
    only when its texts changed, so registering more good images does not load the model again.
    """
    product.defects.min_similarity = calibrate_examples(product)
    if product.defects.types or not product.gate.type_from_priors:
        product.text_index = None
    else:
        product.text_index = build_text_index(product)

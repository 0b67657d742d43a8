"""MMAD protocol: multiple-choice questions answered with one normal template, scored as MMAD does.

MMAD (Jiang et al., ICLR 2025) asks several questions per image, showing one normal template
beside the query. Its file (``mmad.json``) is keyed by the image path relative to the data
root; each record holds ``conversation`` (``Question``, ``Options`` {letter: text}, ``Answer``
letter, ``type``), ``similar_templates`` and ``random_templates`` (normal reference paths).

This module

* generates questions in that schema from any labelled dataset (:func:`generate_questions`):
  *Anomaly Detection* (yes/no) for every image; for anomalous ones *Defect Classification*
  (among the category's defect types: names from ``mmad/domain_knowledge.json`` where the
  category is there, else the dataset's folder names) and *Defect Localization* (the 3×3
  grid cell holding the centroid of the largest ground-truth region); the reference is
  the most similar good image of the category's reference pool (``similar_templates``, by the
  cosine of mean-pooled backbone features, as MMAD picks its similar templates);
* answers a question file, official or generated, with any policy (:func:`answer_questions`),
  mapping the policy's structured answer onto the options in one place (:func:`choose_option`);
* scores the answers (:func:`score_mmad`) following MMAD's ``caculate_accuracy_mmad``:
  accuracy per (source dataset, question type), *Anomaly Detection* replaced by the balanced
  accuracy (mean of the accuracy on normal and on anomalous images), ``Object Structure`` and
  ``Object Details`` merged into ``Object Analysis``, the mean over types per source dataset
  (the first path component), then the mean over source datasets; overkill = 1 − accuracy on
  normal images, miss = 1 − accuracy on anomalous images.

Three deliberate differences from MMAD's script, none of which changes a score on the
official file where every answer is a letter and every source dataset has every type and
both classes: an answer that is not one of the options counts as **wrong** (MMAD drops it);
a question type a source dataset has no question of is left out of its mean (MMAD counts 0);
with one class only, *Anomaly Detection* is that class's accuracy (MMAD averages with 0).
Normal vs anomalous is read from the Anomaly Detection answer (``No`` = normal) where the
question is present, else from ``good`` in the path as MMAD does.

A little over our usual ~400 lines: generating, answering and scoring are one protocol, and
the deliberate differences from MMAD's script above are only checkable when they sit together.
"""

from __future__ import annotations

import json
import logging
import re
import time
import zlib
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from iad_agent.types import Box, FinalAnswer, Sample  # noqa: F401  (Box: used by the doctests)

if TYPE_CHECKING:
    from iad_agent.policies import ResolvedPolicy

log = logging.getLogger(__name__)

ANOMALY_DETECTION = "Anomaly Detection"
DEFECT_CLASSIFICATION = "Defect Classification"
DEFECT_LOCALIZATION = "Defect Localization"
OBJECT_ANALYSIS = "Object Analysis"
AD_QUESTION = "Is there any defect in the object?"
DC_QUESTION = "There is a defect in the object. What is the type of the defect?"
DL_QUESTION = "There is a defect in the object. Where is the defect?"
LETTERS = "ABCDE"
#: The 3×3 grid of image regions, row by row (top to bottom), as location options.
GRID = (("top left", "top", "top right"), ("left", "center", "right"), ("bottom left", "bottom", "bottom right"))
N_TEMPLATES = 5


def normalize(text: str | None) -> str:
    """Lower-case words only: ``"Broken large."`` and ``"broken_large"`` -> ``"broken large"``.

    >>> normalize(" Top-left. "), normalize("broken_large")
    ('top left', 'broken large')
    """
    return " ".join(re.findall(r"[a-z0-9]+", str(text or "").lower()))


def option_text(name: str) -> str:
    """An option as MMAD writes them: capitalised, words separated by spaces, final period.

    >>> option_text("broken_large")
    'Broken large.'
    """
    words = normalize(name)
    return (words[:1].upper() + words[1:] + ".") if words else ""


def grid_cell(x: float, y: float) -> str:
    """The 3×3 region name holding the normalised point ``(x, y)``.

    >>> grid_cell(0.1, 0.1), grid_cell(0.5, 0.5), grid_cell(0.99, 0.5), grid_cell(1.0, 1.0)
    ('top left', 'center', 'right', 'bottom right')
    """
    col = min(max(int(x * 3), 0), 2)
    row = min(max(int(y * 3), 0), 2)
    return GRID[row][col]


def defect_location(mask: np.ndarray) -> str | None:
    """The grid cell of the centroid of the largest ground-truth region (8-connected)."""
    from scipy import ndimage

    mask = np.asarray(mask).astype(bool)
    if not mask.any():
        return None
    labelled, n = ndimage.label(mask, structure=np.ones((3, 3), int))
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)
    sizes[0] = 0
    ys, xs = np.nonzero(labelled == int(np.argmax(sizes)))
    h, w = mask.shape
    return grid_cell((xs.mean() + 0.5) / w, (ys.mean() + 0.5) / h)


# ----------------------------------------------------------------------------- generation


def category_defect_types(category: str, samples: Iterable[Sample]) -> list[str]:
    """Defect type names of a category: MMAD's domain knowledge where it has the category, else folder names.

    Types seen in ``samples`` are always included, so a sample's own type is always an option.
    """
    from iad_agent.tools.priors import domain_priors

    known = [t for t in domain_priors(category) if t not in ("good", "normal")]
    seen = sorted({s.defect_type for s in samples if s.defect_type})
    return list(dict.fromkeys([*known, *seen]))


def _options(correct: str, others: list[str], rng: np.random.Generator, n: int = 4) -> tuple[dict[str, str], str]:
    """Up to ``n`` options (the correct one and random distractors), shuffled; returns (options, answer letter)."""
    distractors = [o for o in others if normalize(o) != normalize(correct)]
    picks = list(rng.choice(distractors, size=min(n - 1, len(distractors)), replace=False)) if distractors else []
    choices = [correct, *picks]
    rng.shuffle(choices)
    options = {LETTERS[i]: option_text(c) for i, c in enumerate(choices)}
    return options, LETTERS[choices.index(correct)]


def make_conversation(sample: Sample, types: list[str], mask: np.ndarray | None, seed: int = 0) -> list[dict[str, Any]]:
    """The MMAD-style questions of one sample (see the module docstring)."""
    rng = np.random.default_rng([seed, zlib.crc32(str(sample.image_path).encode())])
    conversation = [{"Question": AD_QUESTION, "Options": {"A": "Yes.", "B": "No."},
                     "Answer": "A" if sample.is_anomalous else "B", "type": ANOMALY_DETECTION, "annotation": True}]
    if not sample.is_anomalous:
        return conversation
    if sample.defect_type and len(types) >= 2:
        options, answer = _options(sample.defect_type, types, rng)
        conversation.append({"Question": DC_QUESTION, "Options": options, "Answer": answer,
                             "type": DEFECT_CLASSIFICATION, "annotation": True})
    cell = defect_location(mask) if mask is not None else None
    if cell is not None:
        cells = [c for row in GRID for c in row]
        options, answer = _options(cell, cells, rng)
        conversation.append({"Question": DL_QUESTION, "Options": options, "Answer": answer,
                             "type": DEFECT_LOCALIZATION, "annotation": True})
    return conversation


def descriptors(paths: list[Path], extractor=None) -> np.ndarray:  # noqa: ANN001 - FeatureExtractor
    """L2-normalised mean-pooled patch features (what ``NormalBank.nearest`` compares)."""
    from iad_agent.imageio import load_image
    from iad_agent.vision.features import FeatureExtractor

    extractor = extractor or FeatureExtractor()
    out = []
    for i in range(0, len(paths), extractor.batch_size):
        grids = extractor([load_image(p) for p in paths[i : i + extractor.batch_size]])
        out.append(grids.mean(axis=(1, 2)))
    desc = np.concatenate(out) if out else np.zeros((0, 1), np.float32)
    return desc / np.maximum(np.linalg.norm(desc, axis=1, keepdims=True), 1e-8)


def generate_questions(categories: list[tuple[list[Path], list[Sample]]], key_root: Path, seed: int = 0,
                       on_image: Callable[[int], None] | None = None) -> dict[str, dict[str, Any]]:
    """MMAD-schema questions for the test samples of several categories.

    Args:
        categories: per category, ``(normal reference pool, test samples)``; a sample that
            carries its own references (DeepPCB template) uses those instead of the pool.
        key_root: image keys and template paths are relative to this folder.
        seed: seed of the option order and the random templates.

    Returns:
        ``{image key: {"image_path", "mask_path", "similar_templates", "random_templates",
        "conversation"}}``, the schema of MMAD's ``mmad.json``.
    """
    from iad_agent.vision.features import FeatureExtractor

    extractor = FeatureExtractor()
    questions: dict[str, dict[str, Any]] = {}

    def rel(p: Path) -> str:
        return Path(p).resolve().relative_to(Path(key_root).resolve()).as_posix()

    for pool, samples in categories:
        if not samples:
            continue
        types = category_defect_types(samples[0].category, samples)
        pool_desc = descriptors(pool, extractor) if pool else None
        test_desc = descriptors([s.image_path for s in samples], extractor) if pool else None
        for i, sample in enumerate(samples):
            rng = np.random.default_rng([seed, zlib.crc32(str(sample.image_path).encode()), 1])
            if sample.references:
                similar = list(sample.references)
                randoms = list(sample.references)
            else:
                order = np.argsort(-(pool_desc @ test_desc[i]), kind="stable")
                similar = [pool[j] for j in order[:N_TEMPLATES]]
                randoms = [pool[j] for j in rng.permutation(len(pool))[:N_TEMPLATES]]
            mask = sample.ground_truth_mask() if sample.is_anomalous else None
            key = rel(sample.image_path)
            questions[key] = {
                "image_path": key,
                "mask_path": rel(sample.mask_path) if sample.mask_path else None,
                "similar_templates": [rel(p) for p in similar],
                "random_templates": [rel(p) for p in randoms],
                "conversation": make_conversation(sample, types, mask, seed),
            }
            if on_image:
                on_image(1)
    return questions


# ----------------------------------------------------------------------------- answering


def choose_option(answer: FinalAnswer | None, question: dict[str, Any]) -> str | None:
    """The option letter a structured answer implies, or ``None`` when it implies none.

    This is the one place where the embedded / knn policies' structured answers meet the
    multiple-choice format: Anomaly Detection from ``anomaly_present``; Defect
    Classification from ``defect_type`` (no type never matches); Defect Localization from
    the 3×3 cell holding the centre of the answer's box. Other question types (object
    classification, description, analysis) cannot be read off a structured answer; a VLM
    policy would answer the question text instead.

    >>> q = {"type": "Defect Localization", "Options": {"A": "Top left.", "B": "Center."}}
    >>> choose_option(FinalAnswer(True, box=Box(0.4, 0.4, 0.6, 0.6)), q)
    'B'
    >>> choose_option(FinalAnswer(None), {"type": "Anomaly Detection", "Options": {"A": "Yes.", "B": "No."}}) is None
    True
    """
    if answer is None:
        return None
    qtype = question.get("type")
    options = {letter: normalize(text) for letter, text in question.get("Options", {}).items()}
    if qtype == ANOMALY_DETECTION:
        if answer.anomaly_present is None:
            return None
        want = "yes" if answer.anomaly_present else "no"
        return next((k for k, v in options.items() if v.split(" ")[:1] == [want]), None)
    if qtype == DEFECT_CLASSIFICATION:
        want = normalize(answer.defect_type)
        return next((k for k, v in options.items() if want and v == want), None)
    if qtype == DEFECT_LOCALIZATION:
        if answer.box is None:
            return None
        want = grid_cell(*answer.box.center)
        return next((k for k, v in options.items() if v == want), None)
    return None


def _product_name(key: str) -> str:
    parts = Path(key).parts
    name = parts[1] if len(parts) > 2 else parts[0]
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._-") or "product"
    return name[:64]


def answer_questions(questions: dict[str, dict[str, Any]], image_root: Path, policies: list[ResolvedPolicy],
                     fpr: float = 0.05, max_steps: int = 6, n_templates: int = 1,
                     on_image: Callable[[int], None] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Answer every question with each policy, one normal template as the product's reference.

    Args:
        questions: an MMAD-schema question dict (official or generated).
        image_root: folder the keys and template paths are relative to.
        policies: the policies, as :func:`iad_agent.policies.resolve_policy` gives them.
        n_templates: how many of ``similar_templates`` (else ``random_templates``) to register.

    Returns:
        ``{label: [answer entry]}``; an entry is MMAD's ``{"image", "question",
        "question_type", "correct_answer", "gpt_answer"}`` plus ``normal`` and ``ms``.
    """
    from iad_agent.inspector import Inspector
    from iad_agent.product import Product
    from iad_agent.tools.priors import domain_priors

    image_root = Path(image_root)
    items = sorted(questions.items(), key=lambda kv: (tuple(_templates(kv[1])[:n_templates]), kv[0]))
    products: OrderedDict[tuple, Product] = OrderedDict()
    answers: dict[str, list[dict[str, Any]]] = {p.label: [] for p in policies}
    for key, item in items:
        refs = tuple(_templates(item)[:n_templates])
        if not refs:
            raise ValueError(f"{key}: no similar_templates or random_templates to use as the normal reference")
        product = products.get(refs)
        if product is None:
            name = _product_name(key)
            product = Product.build(name, [image_root / r for r in refs], fpr=fpr, priors=domain_priors(name),
                                    allow_mixed_sizes=True)
            products[refs] = product
            while len(products) > 4:
                products.popitem(last=False)
        inspectors = [Inspector(product, p.policy, p.tools, max_steps=max_steps) for p in policies]
        prepared = inspectors[0].prepare(image_root / key)  # once, shared by every policy
        conversation = item.get("conversation", [])
        normal = _is_normal(key, conversation)
        for resolved, inspector in zip(policies, inspectors):
            label = resolved.label
            t0 = time.perf_counter()
            result = inspector.inspect(prepared)
            ms = prepared.ms + (time.perf_counter() - t0) * 1000
            for q in conversation:
                answers[label].append({
                    "image": key,
                    "question": q.get("Question", ""),
                    "question_type": q.get("type", ""),
                    "correct_answer": q.get("Answer"),
                    "gpt_answer": choose_option(result.trajectory.answer, q),
                    "normal": normal,
                    "ms": round(ms, 2),
                })
        if on_image:
            on_image(len(policies))
    return answers


def _templates(item: dict[str, Any]) -> list[str]:
    return list(item.get("similar_templates") or item.get("random_templates") or [])


def _is_normal(key: str, conversation: list[dict[str, Any]]) -> bool:
    for q in conversation:
        if q.get("type") == ANOMALY_DETECTION and q.get("Answer") in q.get("Options", {}):
            return normalize(q["Options"][q["Answer"]]).startswith("no")
    return "good" in key


# ----------------------------------------------------------------------------- scoring


def score_mmad(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """MMAD's score of answer entries (see the module docstring for the protocol).

    Args:
        entries: ``{"image", "question_type", "correct_answer", "gpt_answer"}`` and optionally
            ``normal`` (else ``"good" in image``). The source dataset is the first path
            component of ``image``.

    Returns:
        ``{"datasets": {name: {"types": {type: accuracy}, "average", "overkill", "miss",
        "n_questions", "invalid"}}, "average": {the same, averaged over datasets}}``;
        fractions in [0, 1].

    >>> e = [{"image": "d/a.png", "question_type": "Anomaly Detection", "correct_answer": "A", "gpt_answer": "A"},
    ...      {"image": "d/good/b.png", "question_type": "Anomaly Detection", "correct_answer": "B", "gpt_answer": "A"},
    ...      {"image": "d/good/c.png", "question_type": "Anomaly Detection", "correct_answer": "B", "gpt_answer": "B"}]
    >>> s = score_mmad(e)["datasets"]["d"]
    >>> s["types"]["Anomaly Detection"], s["overkill"], s["miss"]
    (0.75, 0.5, 0.0)
    """
    stats: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    detection: dict[str, dict[bool, list[int]]] = defaultdict(lambda: {True: [0, 0], False: [0, 0]})
    invalid: dict[str, int] = defaultdict(int)
    for e in entries:
        dataset = str(e["image"]).split("/")[0]
        qtype = e["question_type"]
        if qtype in ("Object Structure", "Object Details"):
            qtype = OBJECT_ANALYSIS
        correct = e.get("gpt_answer") is not None and e.get("gpt_answer") == e.get("correct_answer")
        if e.get("gpt_answer") not in tuple(LETTERS):
            invalid[dataset] += 1
        cell = stats[dataset][qtype]
        cell[0] += int(correct)
        cell[1] += 1
        if qtype == ANOMALY_DETECTION:
            normal = e["normal"] if e.get("normal") is not None else "good" in str(e["image"])
            detection[dataset][normal][0] += int(correct)
            detection[dataset][normal][1] += 1
    datasets: dict[str, dict[str, Any]] = {}
    for dataset, types in stats.items():
        accuracy = {t: c / n for t, (c, n) in types.items() if n}
        normal_acc = _rate(detection[dataset][True])
        anomaly_acc = _rate(detection[dataset][False])
        if ANOMALY_DETECTION in accuracy:
            defined = [a for a in (normal_acc, anomaly_acc) if a is not None]
            accuracy[ANOMALY_DETECTION] = sum(defined) / len(defined)
        datasets[dataset] = {
            "types": dict(sorted(accuracy.items())),
            "average": float(np.mean(list(accuracy.values()))) if accuracy else None,
            "overkill": None if normal_acc is None else 1 - normal_acc,
            "miss": None if anomaly_acc is None else 1 - anomaly_acc,
            "n_questions": sum(n for _, n in types.values()),
            "invalid": invalid[dataset],
        }
    return {"datasets": dict(sorted(datasets.items())), "average": _average(datasets)}


def _rate(counts: list[int]) -> float | None:
    return counts[0] / counts[1] if counts[1] else None


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def _average(datasets: dict[str, dict[str, Any]]) -> dict[str, Any]:
    types = sorted({t for d in datasets.values() for t in d["types"]})
    return {
        "types": {t: _mean(d["types"].get(t) for d in datasets.values()) for t in types},
        "average": _mean(d["average"] for d in datasets.values()),
        "overkill": _mean(d["overkill"] for d in datasets.values()),
        "miss": _mean(d["miss"] for d in datasets.values()),
        "n_questions": sum(d["n_questions"] for d in datasets.values()),
        "invalid": sum(d["invalid"] for d in datasets.values()),
    }


def load_questions(path: Path) -> dict[str, dict[str, Any]]:
    """Read an MMAD question file, checking the keys the protocol needs.

    Raises:
        ValueError: not a JSON object of records with a ``conversation`` list.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: cannot read the MMAD question file ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object keyed by image path (MMAD's mmad.json schema)")
    for key, item in data.items():
        conv = item.get("conversation") if isinstance(item, dict) else None
        if not isinstance(conv, list) or not all(isinstance(q, dict) and {"Question", "Options", "Answer", "type"} <= set(q)
                                                   for q in conv):
            raise ValueError(f"{path}: record {key!r} needs a 'conversation' list of "
                             "{Question, Options, Answer, type} objects")
    return data

"""Plan a benchmark: which ``(dataset, category, shots, seed)`` groups to run, on which references.

A *group* is one ``(dataset, category, shots, seed)``: its k good references are drawn with
the seed, ONE product is registered from them (threshold set from those good images alone,
never from the test split), and every policy inspects every test image against it. The
query's features, global look and heat map are computed once per image and shared by the
policies; each policy's latency is that shared part plus its own agent loop, so the figures
stay per-policy end-to-end times.

Where the good references come from (:func:`split_dataset`):

* ``train``: datasets with a ``train`` split (MVTec AD layout, LOCO, VisA): references from
  the normal training images, the test split is the test set. A category without normal test
  images (our MVTec LOCO juice_bottle copy) uses its ``validation/good`` images as the normal
  test images.
* ``held-out normals``: datasets without a train split (Magnetic Tile, KolektorSDD): a fixed
  pool of ``min(max_normals, n_normal // 2)`` normal images, evenly spaced over the sorted
  file names, is set aside as the reference pool and never tested; everything else is the
  test set, the same for every shots and seed.
* ``given``: datasets whose samples carry their own good reference (DeepPCB's template): each
  test image is inspected against a product registered from its own template only; such a
  group has ``shots="given"`` and runs once.

``shots="all"`` means the whole pool, capped at ``max_normals``. When k covers the whole pool,
every seed would draw the same set, so only the first seed is run.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from iad_agent.datasets import READERS, data_root, list_categories, load_dataset
from iad_agent.policies import VLMOptions, policy_label

if TYPE_CHECKING:
    from iad_agent.vision.features import FeatureConfig
from iad_agent.types import Sample

log = logging.getLogger(__name__)

SHOTS_ALL = "all"
SHOTS_GIVEN = "given"
#: ``--shots 0``: zero-shot, each test image scored against the category's other test images.
SHOTS_ZERO = 0
#: Policies of zero-shot groups (:data:`iad_agent.zeroshot.ZERO_SHOT_POLICIES`; kept here without importing it).
ZERO_SHOT_LABELS = ("zero-shot", "zero-shot-mutual", "zero-shot-self", "zero-shot-no-clip")
#: Each dataset's folder under :func:`iad_agent.datasets.data_root`.
DATASET_FOLDERS = {
    "mvtec": "mvtec_ad",
    "loco": "mvtec_loco",
    "visa": "visa",
    "visa_resplit": "visa_resplit",
    "mpdd": "mpdd",
    "btad": "btad",
    "mvtec3d": "mvtec3d",
    "magnetic_tile": "magnetic_tile",
    "deeppcb": "deeppcb",
    "kolektor": "kolektor",
}


# ----------------------------------------------------------------------------- configuration


@dataclass
class EvalConfig:
    """What to evaluate.

    Attributes:
        datasets: ``(reader name, root folder)`` pairs.
        categories: categories to run (those present in each dataset); ``None`` = all.
        shots: k values (``int``) and/or ``"all"``.
        seeds: number of seeds (``0 .. seeds-1``) for drawing the references.
        policies: policy names (``knn``, ``embedded``, ``embedded-no-zoom``, ``openai``, ...).
        disable_tools: tools left out of every tool-using policy (labels get ``-no-<tool>``).
        max_test: cap on the test images per category, evenly spaced within each class (``None`` = all).
        max_normals: cap on the references for ``shots="all"`` and on a held-out pool.
        fpr: false-alarm rate the products' thresholds are set for.
        policy_options: VLM backend settings, passed to :func:`iad_agent.policies.resolve_policy`.
        max_steps: the agent loop's step budget.
        examples: save best/worst example tiles for the first seed's records.
        features: the feature extractor of every product (``iad eval --backbone``); None = the default.
    """

    datasets: list[tuple[str, Path]]
    categories: list[str] | None = None
    shots: list[int | str] = field(default_factory=lambda: [1])
    seeds: int = 1
    policies: list[str] = field(default_factory=lambda: ["knn", "embedded"])
    disable_tools: tuple[str, ...] = ()
    max_test: int | None = None
    max_normals: int = 50
    fpr: float = 0.05
    policy_options: VLMOptions = field(default_factory=VLMOptions)
    max_steps: int = 6
    examples: bool = True
    features: FeatureConfig | None = None


#: Other names a dataset's folder goes by where it is unpacked as released (tried after
#: :data:`DATASET_FOLDERS`' own, in this order).
FOLDER_ALIASES = {
    "mvtec": ("mvtec_anomaly_detection", "MVTec_AD", "mvtec"),
    "loco": ("mvtec_loco_anomaly_detection", "MVTec_LOCO"),
    "visa": ("VisA", "VisA_20220922"),
    "visa_resplit": ("visa_pytorch",),
    "mpdd": ("MPDD",),
    "btad": ("BTech_Dataset_transformed", "BTAD"),
    "mvtec3d": ("mvtec_3d_anomaly_detection", "MVTec3D-AD", "mvtec_3d"),
    "magnetic_tile": ("Magnetic-tile-defect-datasets.", "Magnetic-tile-defect-datasets"),
    "deeppcb": ("DeepPCB",),
    "kolektor": ("KolektorSDD", "KolektorSDD2"),
}


def _folders(dataset: str) -> tuple[str, ...]:
    return (DATASET_FOLDERS.get(dataset, dataset),) + FOLDER_ALIASES.get(dataset, ())


def default_root(dataset: str) -> Path:
    """The dataset's folder under the shared data root (``mvtec`` -> ``<data>/mvtec_ad``, or the
    first of its release names that exists there, e.g. ``<data>/mvtec_anomaly_detection``)."""
    if dataset not in READERS:
        raise ValueError(f"unknown dataset {dataset!r}; valid names: {', '.join(sorted(READERS))}")
    root = data_root()
    return next((root / f for f in _folders(dataset) if (root / f).is_dir()), root / _folders(dataset)[0])


def available_datasets() -> list[tuple[str, Path]]:
    """Every dataset whose folder (or one of its release names) exists under the data root, in
    :data:`DATASET_FOLDERS` order."""
    found, seen = [], set()
    for name in DATASET_FOLDERS:
        path = default_root(name)
        if path.is_dir() and path.resolve() not in seen:
            found.append((name, path))
            seen.add(path.resolve())
    return found


def parse_shots(values: Iterable[str | int]) -> list[int | str]:
    """``["1", "4", "all"]`` -> ``[1, 4, "all"]``; ``0`` is zero-shot; refuses anything else.

    >>> parse_shots(["4", "all", 1, "0"])
    [4, 'all', 1, 0]
    """
    out: list[int | str] = []
    for v in values:
        text = str(v).strip().lower()
        if text == SHOTS_ALL:
            out.append(SHOTS_ALL)
        elif text.isdigit():
            out.append(int(text))
        else:
            raise ValueError(f"--shots takes a number of good references (0 = zero-shot) or 'all', got {v!r}")
    return list(dict.fromkeys(out))


# ----------------------------------------------------------------------------- splits


@dataclass
class DatasetSplit:
    """The reference pool and the test set of one category (see the module docstring)."""

    protocol: str  # "train" | "held-out normals" | "given"
    pool: list[Path]
    test: list[Sample]
    note: str = ""


def evenly_spaced(items: list, n: int) -> list:
    """``n`` items at indices ``linspace(0, len-1, n)`` (all of them when ``n >= len``).

    >>> evenly_spaced(list(range(10)), 3)
    [0, 4, 9]
    """
    if n >= len(items):
        return list(items)
    if n <= 0:
        return []
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


def cap_test(samples: list[Sample], n: int) -> list[Sample]:
    """At most ``n`` test samples, evenly spaced within each class, keeping at least one of each class.

    >>> s = [Sample(Path(f"{i}.png"), "c", int(i >= 8)) for i in range(10)]
    >>> [int(x.image_path.stem) for x in cap_test(s, 4)]
    [0, 4, 7, 8]
    """
    if n >= len(samples):
        return list(samples)
    normal = [s for s in samples if not s.is_anomalous]
    anomalous = [s for s in samples if s.is_anomalous]
    n_normal = round(n * len(normal) / len(samples))
    n_normal = min(len(normal), max(n_normal, 1 if normal else 0, n - len(anomalous)))
    if anomalous and n_normal >= n:
        n_normal = n - 1
    picked = evenly_spaced(normal, n_normal) + evenly_spaced(anomalous, n - n_normal)
    return sorted(picked, key=lambda s: str(s.image_path))


def split_dataset(samples: list[Sample], max_normals: int = 50) -> DatasetSplit:
    """Decide where a category's good references come from and what is tested.

    Args:
        samples: every sample of one category (all splits), as a reader returns them.
        max_normals: size cap of a held-out reference pool.
    """
    test = [s for s in samples if s.split == "test"]
    if any(s.references for s in test):
        return DatasetSplit("given", [], test, "each test image against its own given good reference")
    train = [s.image_path for s in samples if s.split == "train" and not s.is_anomalous]
    if train:
        note = ""
        if not any(not s.is_anomalous for s in test):
            val = [s for s in samples if s.split == "validation" and not s.is_anomalous]
            if val:
                test = sorted(test + val, key=lambda s: str(s.image_path))
                note = f"no normal test images: the {len(val)} validation/good images are the normal test images"
        return DatasetSplit("train", train, test, note)
    normals = [s for s in samples if not s.is_anomalous]
    n_pool = min(max_normals, len(normals) // 2)
    pool = evenly_spaced(normals, n_pool)
    held = {s.image_path for s in pool}
    rest = [s for s in samples if s.image_path not in held]
    return DatasetSplit("held-out normals", [s.image_path for s in pool], rest,
                        f"no train split: {len(pool)} of {len(normals)} normal images (evenly spaced) are the "
                        "reference pool and are not tested")


def draw_references(pool: list[Path], shots: int | str, seed: int, category: str, max_normals: int = 50) -> list[Path]:
    """The k references of one group: a seeded draw without replacement, in pool order.

    ``shots="all"`` takes the pool (a seeded draw of ``max_normals`` when it is larger).
    """
    k = len(pool) if shots == SHOTS_ALL else int(shots)
    k = min(k, len(pool), max_normals if shots == SHOTS_ALL else len(pool))
    if k >= len(pool):
        return list(pool)
    rng = np.random.default_rng([seed, zlib.crc32(category.encode())])
    idx = np.sort(rng.choice(len(pool), size=k, replace=False))
    return [pool[i] for i in idx]


# ----------------------------------------------------------------------------- groups


@dataclass
class Group:
    """One ``(dataset, category, shots, seed)`` with the policies still to run on it."""

    dataset: str
    root: Path
    category: str
    shots: int | str
    seed: int
    protocol: str
    references: list[Path]
    test: list[Sample]
    policies: list[str]
    note: str = ""
    examples: bool = False

    def key(self, policy: str) -> tuple:
        return record_key({"dataset": self.dataset, "category": self.category, "shots": self.shots,
                           "seed": self.seed, "policy": policy})

    @property
    def title(self) -> str:
        return f"{self.dataset}/{self.category} shots={self.shots} seed={self.seed}"


def record_key(record: dict[str, Any]) -> tuple:
    """The identity of a record: ``(dataset, category, shots, seed, policy)``."""
    return (record["dataset"], record["category"], str(record["shots"]), int(record["seed"]), record["policy"])


def plan(config: EvalConfig, done: set[tuple] = frozenset()) -> list[Group]:
    """Every group of the run with the policies not yet in ``done`` (groups with none dropped).

    Raises:
        ValueError: a requested category exists in none of the datasets, an unknown policy.
    """
    labels = [p if p in ZERO_SHOT_LABELS else policy_label(p, config.disable_tools) for p in config.policies]
    if len(set(labels)) != len(labels):
        raise ValueError(f"policies give duplicate labels: {labels}")
    # zero-shot groups run the zero-shot policies asked for (by default `zero-shot`), the others the rest
    zero_labels = [p for p in labels if p in ZERO_SHOT_LABELS] or ["zero-shot"]
    shot_labels = [p for p in labels if p not in ZERO_SHOT_LABELS]
    k_shots = [s for s in config.shots if s != SHOTS_ZERO]
    groups: list[Group] = []
    wanted = list(dict.fromkeys(config.categories)) if config.categories else None
    seen_categories: set[str] = set()
    for dataset, root in config.datasets:
        available = list_categories(dataset, root)
        cats = [c for c in available if wanted is None or c in wanted]
        seen_categories.update(cats)
        for cat in cats:
            split = split_dataset(load_dataset(dataset, root, cat), config.max_normals)
            test = cap_test(split.test, config.max_test) if config.max_test else split.test
            if not test:
                log.warning("%s/%s: no test images, skipped", dataset, cat)
                continue
            runs = [(SHOTS_ZERO, 0, [])] if SHOTS_ZERO in config.shots else []
            if split.protocol == "given":
                runs += [(SHOTS_GIVEN, 0, [])] if k_shots else []
            else:
                seen_sets = set()
                for shots in k_shots:
                    for seed in range(config.seeds):
                        refs = draw_references(split.pool, shots, seed, cat, config.max_normals)
                        signature = (shots, tuple(refs))
                        if signature in seen_sets:  # the whole pool: every seed draws the same set
                            continue
                        seen_sets.add(signature)
                        runs.append((shots, seed, refs))
            for shots, seed, refs in runs:
                zero = shots == SHOTS_ZERO
                group = Group(dataset, Path(root), cat, shots, seed, "batch" if zero else split.protocol, refs, test, [],
                              "zero-shot: each test image scored against the category's other test images" if zero
                              else split.note, examples=config.examples and seed == 0)
                group.policies = [p for p in (zero_labels if zero else shot_labels) if group.key(p) not in done]
                if group.policies:
                    groups.append(group)
    if wanted:
        missing = [c for c in wanted if c not in seen_categories]
        if missing:
            names = ", ".join(f"{d}: {', '.join(list_categories(d, r))}" for d, r in config.datasets)
            raise ValueError(f"category {', '.join(missing)} not found (available: {names})")
    return groups

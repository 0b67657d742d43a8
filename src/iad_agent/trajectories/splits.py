"""Splits for open-vocabulary evaluation (IndusAgent's zero-shot protocol), saved with the dataset.

Two levels, both recorded in ``split.json`` next to the trajectories:

- **by category**: trajectories are built only from the *train categories*; the *held-out
  categories* (by default every other category of the dataset) are never seen in training and
  are listed with all their images for zero-shot evaluation;
- **by image**: inside the train categories, a stratified ``test_fraction`` of the images (per
  label and defect type) is held out as the ``test`` split (with at least one defect whenever
  the category has two defective images, even where rounding per type would leave none), and each category's *bank* (the
  good images registered as the product's normal bank, i.e. the tools' references) is kept
  apart from both.

Image paths are stored relative to the dataset root, so the split survives moving the data.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from iad_agent.types import ANOMALOUS, Sample

PARTS = ("bank", "train", "test", "held_out")


@dataclass
class Split:
    """Which image goes where; see the module docstring.

    Attributes:
        dataset / root: the reader name and the dataset folder the paths are relative to.
        train_categories / held_out_categories: the category-level split.
        test_fraction / seed / normals_per_category: how the image-level split was drawn.
        bank / train / test / held_out: ``{category: [relative image path, ...]}`` per part.
    """

    dataset: str
    root: str
    train_categories: list[str]
    held_out_categories: list[str]
    test_fraction: float
    seed: int
    normals_per_category: int
    bank: dict[str, list[str]] = field(default_factory=dict)
    train: dict[str, list[str]] = field(default_factory=dict)
    test: dict[str, list[str]] = field(default_factory=dict)
    held_out: dict[str, list[str]] = field(default_factory=dict)

    def part_of(self, sample: Sample) -> str | None:
        """``bank`` / ``train`` / ``test`` / ``held_out`` for a sample, ``None`` if not in the split."""
        key = self.key(sample.image_path)
        for part in PARTS:
            if key in getattr(self, part).get(sample.category, ()):
                return part
        return None

    def bank_paths(self, category: str) -> list[Path]:
        """Absolute paths of the good images registered as ``category``'s normal bank."""
        return [Path(self.root) / p for p in self.bank.get(category, [])]

    def check(self) -> None:
        """Refuse leakage: an image in two parts, or a category both trained on and held out.

        Raises:
            ValueError: naming the first leaked category or image.
        """
        both = set(self.train_categories) & set(self.held_out_categories)
        if both:
            raise ValueError(f"categories both trained on and held out: {sorted(both)}")
        seen: dict[str, str] = {}
        for part in PARTS:
            allowed = self.held_out_categories if part == "held_out" else self.train_categories
            for category, paths in getattr(self, part).items():
                if category not in allowed:
                    raise ValueError(f"category {category!r} does not belong in the {part} split")
                for path in paths:
                    if path in seen:
                        raise ValueError(f"{path} is in both the {seen[path]} and the {part} split")
                    seen[path] = part

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> Split:
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))

    def key(self, path: str | Path) -> str:
        """An image path as stored: relative to the dataset root when it lies under it."""
        try:
            return Path(path).resolve().relative_to(Path(self.root)).as_posix()
        except ValueError:
            return Path(path).resolve().as_posix()


def make_split(samples: list[Sample], dataset: str, root: str | Path, train_categories: list[str] | None = None,
               held_out_categories: list[str] | None = None, test_fraction: float = 0.2, seed: int = 0,
               normals_per_category: int = 10) -> Split:
    """Split a dataset's samples by category and by image.

    Args:
        samples: every sample of the dataset (all splits of all categories).
        dataset / root: recorded so the split can be reloaded against the data.
        train_categories: categories to build trajectories from; ``None`` = all of them.
        held_out_categories: categories kept for zero-shot evaluation; ``None`` = all the others.
        test_fraction: share of each (category, label, defect type) stratum held out as ``test``.
        seed: seeds the image-level draw.
        normals_per_category: good training images (evenly spaced) registered as the bank.

    Raises:
        ValueError: an unknown category name, an overlap of train and held-out categories, or a
            train category without any good training image for its bank.
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    by_category: dict[str, list[Sample]] = defaultdict(list)
    for s in samples:
        by_category[s.category].append(s)
    known = sorted(by_category)
    train_cats = list(train_categories) if train_categories else known
    held = list(held_out_categories) if held_out_categories is not None else [c for c in known if c not in train_cats]
    for cat in train_cats + held:
        if cat not in by_category:
            raise ValueError(f"unknown category {cat!r} in {root}; available: {', '.join(known)}")
    split = Split(dataset, str(Path(root).resolve()), train_cats, held, test_fraction, seed, normals_per_category)
    rng = random.Random(seed)
    for cat in train_cats:
        cat_samples = sorted(by_category[cat], key=lambda s: str(s.image_path))
        # The bank comes from the good training images; datasets without a train split lend good test images.
        goods = [s for s in cat_samples if s.split == "train" and not s.is_anomalous] or [s for s in cat_samples if not s.is_anomalous]
        if not goods:
            raise ValueError(f"category {cat!r} has no good image to register as its normal bank")
        picks = np.unique(np.linspace(0, len(goods) - 1, min(normals_per_category, len(goods))).round().astype(int))
        bank = {goods[int(i)].image_path for i in picks}
        split.bank[cat] = sorted(split.key(p) for p in bank)
        strata: dict[tuple, list[Sample]] = defaultdict(list)
        for s in cat_samples:
            if s.image_path not in bank:
                strata[(s.label, s.defect_type or "")].append(s)
        train, test = [], []
        for key in sorted(strata):
            group = strata[key]
            rng.shuffle(group)
            n_test = int(round(test_fraction * len(group)))
            test += [split.key(s.image_path) for s in group[:n_test]]
            train += [split.key(s.image_path) for s in group[n_test:]]
        defective = {split.key(s.image_path) for k, group in strata.items() if k[0] == ANOMALOUS for s in group}
        if test_fraction > 0 and not defective & set(test):
            # Rounding per defect type left the test split without any defect (few anomalous images):
            # move one from the largest defect type, as long as training keeps one too.
            defects = sorted((k for k in strata if k[0] == ANOMALOUS), key=lambda k: (-len(strata[k]), k))
            if defects and len(strata[defects[0]]) >= 2:
                moved = split.key(strata[defects[0]][0].image_path)
                train.remove(moved)
                test.append(moved)
        split.train[cat], split.test[cat] = sorted(train), sorted(test)
    for cat in held:
        split.held_out[cat] = sorted(split.key(s.image_path) for s in by_category[cat])
    split.check()
    return split

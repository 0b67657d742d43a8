"""Build AgentIAD-style and Indus-CoT trajectories from a labelled dataset.

For every train category one product is registered from a few good training images (its
*bank*, see :mod:`~iad_agent.trajectories.splits`); then every selected sample is inspected by
the :class:`~iad_agent.trajectories.teacher.TeacherPolicy` through the same
:class:`~iad_agent.inspector.Inspector` and agent loop as inference, with the same tool set
and system prompt that ``iad inspect --policy hf`` uses. Mix ratios of the styles and of
normal / anomalous samples are options of :class:`BuildConfig`.
"""

from __future__ import annotations

import logging
import random
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from iad_agent.trajectories.splits import Split, make_split
from iad_agent.trajectories.styles import STYLES
from iad_agent.trajectories.teacher import TeacherPolicy
from iad_agent.types import Sample, Trajectory

if TYPE_CHECKING:
    from iad_agent.product import Product
    from iad_agent.tools.base import Tool
    from iad_agent.trajectories.reasoner import VLMReasoner

log = logging.getLogger(__name__)


@dataclass
class BuildConfig:
    """How a trajectory dataset is built (recorded in the dataset card).

    Attributes:
        dataset: reader name (``mvtec``, ``loco``, ``magnetic_tile``, ...).
        root: the dataset folder.
        train_categories: categories to build from; ``None`` = all.
        held_out_categories: categories kept for zero-shot evaluation; ``None`` = all others.
        styles: style → weight (normalised); each sample gets one style in these proportions.
        normal_fraction: target share of normal trajectories per category and split (the
            majority label is subsampled); ``None`` keeps every sample.
        max_per_category: at most this many trajectories per category and split.
        test_fraction: share of each category's images held out as the ``test`` split.
        normals_per_category: good training images registered as each product's bank.
        jitter / margin / fine_area: the teacher's region jitter, context margin and
            fine-grained threshold (see :class:`TeacherPolicy`).
        max_steps: the turn budget written into the system prompt (as at inference).
        anomaly_map_tool: list the ``anomaly_map`` tool in the system prompt, as ``iad inspect``
            does for VLM policies (the teacher never calls it).
        seed: seeds the split, the selection, the style assignment and the phrasing.
    """

    dataset: str = "mvtec"
    root: str = ""
    train_categories: list[str] | None = None
    held_out_categories: list[str] | None = None
    styles: dict[str, float] = field(default_factory=lambda: {s: 1 / len(STYLES) for s in STYLES})
    normal_fraction: float | None = None
    max_per_category: int | None = None
    test_fraction: float = 0.2
    normals_per_category: int = 10
    jitter: float = 0.1
    margin: float = 0.15
    fine_area: float = 0.05
    max_steps: int = 6
    anomaly_map_tool: bool = True
    seed: int = 0


@dataclass
class BuiltTrajectory:
    """One teacher trajectory with what the export needs to know about it."""

    trajectory: Trajectory
    sample: Sample
    style: str
    split: str
    id: str
    teacher: str = "template"  # "template" or "vlm" (who wrote the reasoning text)


@dataclass
class BuildResult:
    trajectories: list[BuiltTrajectory]
    split: Split
    config: BuildConfig
    skipped: dict[str, int] = field(default_factory=dict)


def inference_tools(anomaly_map: bool = True) -> dict[str, Tool]:
    """The tool set ``iad inspect`` gives a VLM policy (the same resolver), so the system prompts are identical."""
    from iad_agent.policies import tools_for

    return tools_for("hf", () if anomaly_map else ("anomaly_map",))


def sample_seed(seed: int, sample: Sample) -> int:
    """A per-sample seed that does not depend on the order samples are built in."""
    return zlib.crc32(f"{seed}:{sample.category}:{Path(sample.image_path).name}:{sample.defect_type}".encode())


def build_trajectory(product: Product, sample: Sample, style: str, tools: dict[str, Tool] | None = None, seed: int = 0,
                     jitter: float = 0.1, margin: float = 0.15, fine_area: float = 0.05, max_steps: int = 6) -> Trajectory:
    """Run the teacher on one sample through the real inspector; returns the finished trajectory.

    Raises:
        ValueError: the episode did not end with an answer (a tool refused the teacher's call).
    """
    from iad_agent.inspector import Inspector

    teacher = TeacherPolicy(style, seed=sample_seed(seed, sample), jitter=jitter, margin=margin, fine_area=fine_area)
    tools = inference_tools() if tools is None else tools
    result = Inspector(product, teacher, tools, max_steps=max_steps).inspect(sample.image_path, sample)
    traj = result.trajectory
    if traj.stop_reason != "answer":
        raise ValueError(f"{sample.image_path}: teacher episode ended with {traj.stop_reason}: {traj.answer.reason if traj.answer else ''}")
    return traj


def select_samples(samples: list[Sample], normal_fraction: float | None, max_count: int | None, rng: random.Random) -> list[Sample]:
    """Subsample to the normal/anomalous mix, then to the cap (keeping the mix); keeps the input order."""
    normals = [s for s in samples if not s.is_anomalous]
    anomalies = [s for s in samples if s.is_anomalous]
    if normal_fraction is not None and normals and anomalies:
        if not 0 < normal_fraction < 1:
            raise ValueError(f"normal_fraction must be in (0, 1), got {normal_fraction}")
        want_normals = round(normal_fraction / (1 - normal_fraction) * len(anomalies))
        if len(normals) > want_normals:
            normals = rng.sample(normals, max(want_normals, 1))
        else:
            anomalies = rng.sample(anomalies, max(round((1 - normal_fraction) / normal_fraction * len(normals)), 1))
    total = len(normals) + len(anomalies)
    if max_count is not None and total > max_count:
        n_normal = min(round(max_count * len(normals) / total), len(normals))
        n_normal = max(n_normal, 1) if normals and max_count > 1 else n_normal
        normals = rng.sample(normals, n_normal)
        anomalies = rng.sample(anomalies, min(max_count - n_normal, len(anomalies)))
    chosen = {s.image_path for s in normals + anomalies}
    return [s for s in samples if s.image_path in chosen]


def assign_styles(n: int, weights: dict[str, float], rng: random.Random) -> list[str]:
    """``n`` styles in the given proportions (largest remainder), shuffled.

    >>> sorted(assign_styles(4, {"perceptive": 0.5, "comparative": 0.5}, random.Random(0)))
    ['comparative', 'comparative', 'perceptive', 'perceptive']
    """
    total = sum(weights.values())
    exact = {k: n * w / total for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: counts[k] - exact[k])[: n - sum(counts.values())]:
        counts[k] += 1
    styles = [k for k in weights for _ in range(counts[k])]
    rng.shuffle(styles)
    return styles


def build(config: BuildConfig, products: dict[str, Product] | None = None, reasoner: VLMReasoner | None = None,
          progress: Callable[[int, int, str], None] | None = None) -> BuildResult:
    """Build the trajectories of ``config``: split, register products, run the teacher.

    Args:
        config: what to build.
        products: already registered products by category (e.g. in tests); the others are
            registered from the split's bank images.
        reasoner: optional teacher VLM that rewrites the reasoning text (rejected when its
            verdict disagrees with the ground truth; the template text is then kept).
        progress: called as ``progress(done, total, description)``.

    Returns:
        The trajectories (train and test split), the split, and counts of skipped samples.
    """
    from iad_agent.datasets import load_dataset
    from iad_agent.product import Product
    from iad_agent.tools.priors import domain_priors

    samples = load_dataset(config.dataset, config.root)
    split = make_split(samples, config.dataset, config.root, config.train_categories, config.held_out_categories,
                       config.test_fraction, config.seed, config.normals_per_category)
    rng = random.Random(config.seed)
    todo: list[tuple[Sample, str, str]] = []
    skipped: Counter[str] = Counter()
    for category in split.train_categories:
        for part in ("train", "test"):
            keys = set(getattr(split, part).get(category, []))
            pool = [s for s in samples if s.category == category and split.key(s.image_path) in keys]
            # An anomaly the teacher cannot localise would teach a wrong zoom: leave it out.
            no_region = [s for s in pool if s.is_anomalous and s.ground_truth_box() is None]
            skipped["anomalous without ground-truth region"] += len(no_region)
            pool = [s for s in pool if s not in no_region]
            chosen = select_samples(pool, config.normal_fraction, config.max_per_category, rng)
            todo += [(s, style, part) for s, style in zip(chosen, assign_styles(len(chosen), config.styles, rng))]
    products = dict(products or {})
    tools = inference_tools(config.anomaly_map_tool)
    built: list[BuiltTrajectory] = []
    for done, (sample, style, part) in enumerate(todo):
        if progress:
            progress(done, len(todo), f"{sample.category}: {style}")
        if sample.category not in products:
            products[sample.category] = Product.build(sample.category, split.bank_paths(sample.category),
                                                      priors=domain_priors(sample.category), allow_mixed_sizes=True)
        try:
            traj = build_trajectory(products[sample.category], sample, style, tools, config.seed, config.jitter,
                                    config.margin, config.fine_area, config.max_steps)
        except ValueError as exc:
            log.warning("skipped: %s", exc)
            skipped["teacher episode failed"] += 1
            continue
        item = BuiltTrajectory(traj, sample, style, part, f"{split.key(sample.image_path)}#{style}")
        if reasoner is not None:
            if reasoner.rewrite(traj, sample, products[sample.category].priors):
                item.teacher = "vlm"
            else:
                skipped["teacher VLM text rejected (template text kept)"] += 1
        built.append(item)
    if progress:
        progress(len(todo), len(todo), "done")
    return BuildResult(built, split, config, {k: v for k, v in skipped.items() if v})

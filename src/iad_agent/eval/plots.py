"""Benchmark plots for ``report.md``: ROC curves, per-category AUROC bars, best and worst cases.

Figures are made with matplotlib's object-oriented API (``matplotlib.figure.Figure``): no
pyplot state and no backend switch in the process that calls them.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from iad_agent.eval.aggregate import _policy_order, _shots_order


def _figure(**kwargs: Any):  # noqa: ANN202 - a matplotlib Figure, imported lazily
    from matplotlib.figure import Figure

    return Figure(**kwargs)


def _save_figure(fig, out_dir: Path, name: str) -> str:  # noqa: ANN001 - a matplotlib Figure
    """Lay ``fig`` out, write it to ``out_dir/name`` (PNG, 110 dpi), and return ``name``."""
    fig.tight_layout()
    (out_dir / name).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_dir / name, dpi=110)
    return name


def plot_roc(records: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """One PNG per category: ROC curves (all seeds pooled) of every policy, one panel per shots."""
    from sklearn.metrics import roc_curve

    by_cat: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("n_normal") and r.get("n_anomalous"):
            by_cat[f"{r['dataset']}/{r['category']}"].append(r)
    files = []
    for cat, rs in by_cat.items():
        shots = sorted({str(r["shots"]) for r in rs}, key=_shots_order)
        fig = _figure(figsize=(3.6 * len(shots), 3.4))
        axes = fig.subplots(1, len(shots), squeeze=False)
        for ax, s in zip(axes[0], shots):
            for policy in _policy_order(r["policy"] for r in rs):
                rows = [row for r in rs if str(r["shots"]) == s and r["policy"] == policy for row in r["samples"]]
                if not rows:
                    continue
                fpr, tpr, _ = roc_curve([row["label"] for row in rows], [row["score"] for row in rows])
                ax.plot(fpr, tpr, label=policy, lw=1.4 if policy in ("knn", "embedded") else 0.9)
            ax.plot([0, 1], [0, 1], color="grey", lw=0.6, ls=":")
            ax.set_title(f"{cat} · shots={s}", fontsize=8)
            ax.set_xlabel("false-positive rate", fontsize=7)
            ax.set_ylabel("true-positive rate", fontsize=7)
            ax.tick_params(labelsize=6)
        axes[0][-1].legend(fontsize=6, loc="lower right")
        files.append(_save_figure(fig, out_dir, f"plots/roc_{cat.replace('/', '_')}.png"))
    return files


def plot_auroc_bars(aggregates: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """Per-category bars of image AUROC per policy (one panel per shots), std as error bars."""
    aggs = [a for a in aggregates if a["image_auroc_mean"] is not None]
    if not aggs:
        return []
    shots = sorted({str(a["shots"]) for a in aggs}, key=_shots_order)
    policies = _policy_order(a["policy"] for a in aggs)
    fig = _figure(figsize=(max(6, 1.6 * len({a['category'] for a in aggs}) + 2), 2.6 * len(shots)))
    axes = fig.subplots(len(shots), 1, squeeze=False)
    width = 0.8 / len(policies)
    for ax, s in zip(axes[:, 0], shots):
        cats = list(dict.fromkeys(f"{a['dataset']}/{a['category']}" for a in aggs if str(a["shots"]) == s))
        index = {(f"{a['dataset']}/{a['category']}", a["policy"]): a for a in aggs if str(a["shots"]) == s}
        for j, p in enumerate(policies):
            vals = [index[(c, p)]["image_auroc_mean"] if (c, p) in index else np.nan for c in cats]
            errs = [index[(c, p)]["image_auroc_std"] or 0 if (c, p) in index else 0 for c in cats]
            ax.bar(np.arange(len(cats)) + j * width, vals, width, yerr=errs, label=p, capsize=1.5)
        ax.set_xticks(np.arange(len(cats)) + 0.4 - width / 2)
        ax.set_xticklabels(cats, fontsize=7)
        ax.set_ylim(0.0, 1.02)
        ax.set_ylabel(f"image AUROC\nshots={s}", fontsize=8)
        ax.tick_params(axis="y", labelsize=7)
    axes[0][0].legend(fontsize=6, ncol=len(policies), loc="lower left")
    return [_save_figure(fig, out_dir, "plots/auroc_bars.png")]


def plot_examples(records: list[dict[str, Any]], out_dir: Path) -> list[str]:
    """Per shots: a grid (rows = categories) of the best and worst heat-map tiles of one policy.

    The policy shown is ``embedded`` when present, else the first policy with examples.
    """
    from PIL import Image

    with_examples = [r for r in records if r.get("examples")]
    if not with_examples:
        return []
    policies = _policy_order(r["policy"] for r in with_examples)
    policy = "embedded" if "embedded" in policies else policies[0]
    files = []
    for s in sorted({str(r["shots"]) for r in with_examples}, key=_shots_order):
        rs = [r for r in with_examples if r["policy"] == policy and str(r["shots"]) == s]
        if not rs:
            continue
        ncol = max(len(r["examples"]) for r in rs)
        fig = _figure(figsize=(2.1 * ncol, 2.3 * len(rs)))
        axes = fig.subplots(len(rs), ncol, squeeze=False)
        for i, r in enumerate(rs):
            for j in range(ncol):
                ax = axes[i][j]
                ax.axis("off")
                if j >= len(r["examples"]):
                    continue
                ex = r["examples"][j]
                path = out_dir / ex["file"]
                if path.exists():
                    ax.imshow(Image.open(path))
                truth = ex["defect_type"] or "good"
                ax.set_title(f"{ex['kind']}: {r['category']} ({truth})\nscore/thr {ex['score'] / max(ex['threshold'], 1e-9):.2f}"
                             f" → {ex['verdict']}", fontsize=6)
        fig.suptitle(f"{policy}, shots={s}: best and worst cases (white: answer box, green: ground truth)", fontsize=8)
        files.append(_save_figure(fig, out_dir, f"plots/examples_{policy}_shots{s}.png"))
    return files

"""The unseen ELPV cells through the benchmark's runner (the same groups as ``iad eval``, 60 test cells).

    PYTHONPATH=src:experiments python experiments/elpv_eval.py OUT [--policy knn --policy embedded ...] [--shots 1 4 all]
    python -m iad_agent.eval.aggregate OUT      # or read OUT/records.jsonl

ELPV (solar cells, `lab.py: elpv_category`) was never used to choose a setting; it is the check
that a change holds on a product the project has not tuned on. :func:`parser` and :func:`run` are
shared with ``objects_eval.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def parser(policies: list[str]) -> argparse.ArgumentParser:
    """``OUT [--policy P ...] [--shots ...] [--seeds N]`` (``policies``: the default when none is named)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--policy", action="append", default=None, help=f"default: {' '.join(policies)}")
    ap.add_argument("--shots", nargs="+", default=["1", "4", "all"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.set_defaults(default_policies=policies)
    return ap


def run(a: argparse.Namespace, cats: list, max_test: int, per_category: bool = False) -> None:
    """Run the ``iad eval`` groups of each ``lab.Category`` in ``cats`` (references drawn from its pool, its
    test set at most ``max_test`` images) for ``a``'s policies, shots and seeds into ``a.out``; print the means
    over seeds (per category too if ``per_category``)."""
    import lab

    from iad_agent.eval import plan, runner
    from iad_agent.eval.records import read_records

    policies = a.policy or a.default_policies
    shots = [s if s == "all" else int(s) for s in a.shots]
    config = plan.EvalConfig(datasets=[], shots=shots, seeds=a.seeds, policies=policies, max_test=max_test, examples=False)
    groups = []
    for cat in cats:
        test = plan.cap_test(cat.test, max_test)
        groups += [plan.Group(cat.name, cat.pool[0].parent, cat.name, k, seed, "held-out", refs, test, list(policies))
                   for k, seed, refs in lab.groups(cat, shots=tuple(shots), seeds=a.seeds)]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    runner.run_groups(groups, config, Path(a.out), workers=1, threads=1)
    rows: dict = {}
    for r in read_records(Path(a.out) / "records.jsonl"):
        rows.setdefault((str(r["shots"]), r["policy"]) + ((r["category"],) if per_category else ()), []).append(r)
    cat_col = ("| category ", "|---") if per_category else ("", "")
    print(f"| shots | policy {cat_col[0]}| image AUROC | balanced acc. | false-alarm rate | miss rate | tool calls / image |")
    print(f"|---|---{cat_col[1]}|---|---|---|---|---|")
    mean = lambda rs, k: sum(x[k] for x in rs) / len(rs)  # noqa: E731
    for key, rs in sorted(rows.items()):
        print("| " + " | ".join(key) + f" | {mean(rs, 'image_auroc'):.3f} | {mean(rs, 'balanced_accuracy'):.3f} | "
              f"{mean(rs, 'false_alarm_rate'):.3f} | {mean(rs, 'miss_rate'):.3f} | {mean(rs, 'tool_calls_per_image'):.2f} |")


def main() -> None:
    import lab

    a = parser(["knn", "embedded", "embedded-no-brightness"]).parse_args()
    run(a, [lab.elpv_category()], max_test=60)


if __name__ == "__main__":
    main()

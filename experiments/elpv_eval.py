"""The unseen ELPV cells through the benchmark's runner (the same groups as ``iad eval``, 60 test cells).

    PYTHONPATH=src:experiments python experiments/elpv_eval.py OUT [--policy knn --policy embedded ...] [--shots 1 4 all]
    python -m iad_agent.eval.aggregate OUT      # or read OUT/records.jsonl

ELPV (solar cells, `lab.py: elpv_category`) was never used to choose a setting; it is the check
that a change holds on a product the project has not tuned on.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    import lab

    from iad_agent.eval import plan, runner

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--policy", action="append", default=None)
    ap.add_argument("--shots", nargs="+", default=["1", "4", "all"])
    ap.add_argument("--seeds", type=int, default=3)
    a = ap.parse_args()
    policies = a.policy or ["knn", "embedded", "embedded-no-brightness"]
    cat = lab.elpv_category()
    test = plan.cap_test(cat.test, 60)
    shots = [s if s == "all" else int(s) for s in a.shots]
    config = plan.EvalConfig(datasets=[], shots=shots, seeds=a.seeds, policies=policies, max_test=60, examples=False)
    groups = [plan.Group("elpv", cat.pool[0].parent, "elpv", k, seed, "held-out", refs, test, list(policies))
              for k, seed, refs in lab.groups(cat, shots=tuple(shots), seeds=a.seeds)]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    runner.run_groups(groups, config, Path(a.out), workers=1, threads=1)
    from iad_agent.eval.records import read_records

    rows: dict = {}
    for r in read_records(Path(a.out) / "records.jsonl"):
        rows.setdefault((str(r["shots"]), r["policy"]), []).append(r)
    print("| shots | policy | image AUROC | balanced acc. | false-alarm rate | miss rate | tool calls / image |")
    print("|---|---|---|---|---|---|---|")
    mean = lambda rs, k: sum(x[k] for x in rs) / len(rs)  # noqa: E731
    for (k, p), rs in sorted(rows.items()):
        print(f"| {k} | {p} | {mean(rs, 'image_auroc'):.3f} | {mean(rs, 'balanced_accuracy'):.3f} | "
              f"{mean(rs, 'false_alarm_rate'):.3f} | {mean(rs, 'miss_rate'):.3f} | {mean(rs, 'tool_calls_per_image'):.2f} |")


if __name__ == "__main__":
    main()

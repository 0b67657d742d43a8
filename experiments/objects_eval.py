"""The whole agent on the objects with more good test images than ``iad eval`` has (scratch).

Hazelnut and transistor (2 good test images each), bottle (5) and juice bottle (3) make coarse AUROC and
false-alarm steps. Here each object's reference pool is split in two (evenly: even / odd positions):
references are drawn from the first half as ``iad eval`` draws them, and the second half's good
images (never a reference) join the test set. The same groups through the benchmark's runner.

    PYTHONPATH=src:experiments python experiments/objects_eval.py OUT [--policy knn --policy embedded] [--shots 1 4 all]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

OBJECTS = ("hazelnut", "transistor", "bottle", "juice_bottle")


def main() -> None:
    import lab

    from iad_agent.eval import plan, runner
    from iad_agent.eval.records import read_records
    from iad_agent.types import Sample

    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--policy", action="append", default=None)
    ap.add_argument("--shots", nargs="+", default=["1", "4", "all"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cats", default=",".join(OBJECTS))
    a = ap.parse_args()
    policies = a.policy or ["knn", "embedded"]
    shots = [s if s == "all" else int(s) for s in a.shots]
    config = plan.EvalConfig(datasets=[], shots=shots, seeds=a.seeds, policies=policies, max_test=200, examples=False)
    groups = []
    for cat in lab.categories(names=a.cats.split(",")):
        pool, extra = cat.pool[::2], cat.pool[1::2]
        test = list(cat.test) + [Sample(p, cat.name, 0, split="test") for p in extra]
        half = lab.Category(cat.name, pool, test)
        groups += [plan.Group(cat.name, pool[0].parent, cat.name, k, seed, "held-out", refs, test, list(policies))
                   for k, seed, refs in lab.groups(half, shots=tuple(shots), seeds=a.seeds)]
    Path(a.out).mkdir(parents=True, exist_ok=True)
    runner.run_groups(groups, config, Path(a.out), workers=1, threads=1)
    rows: dict = {}
    for r in read_records(Path(a.out) / "records.jsonl"):
        rows.setdefault((str(r["shots"]), r["policy"], r["category"]), []).append(r)
    print("| shots | policy | category | image AUROC | balanced acc. | false-alarm rate | miss rate |")
    print("|---|---|---|---|---|---|---|")
    mean = lambda rs, k: sum(x[k] for x in rs) / len(rs)  # noqa: E731
    for (k, p, c), rs in sorted(rows.items()):
        print(f"| {k} | {p} | {c} | {mean(rs, 'image_auroc'):.3f} | {mean(rs, 'balanced_accuracy'):.3f} | "
              f"{mean(rs, 'false_alarm_rate'):.3f} | {mean(rs, 'miss_rate'):.3f} |")


if __name__ == "__main__":
    main()

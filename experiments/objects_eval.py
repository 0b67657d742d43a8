"""The whole agent on the objects with more good test images than ``iad eval`` has (scratch).

Hazelnut and transistor (2 good test images each), bottle (5) and juice bottle (3) make coarse AUROC and
false-alarm steps. Here each object's reference pool is split in two (evenly: even / odd positions):
references are drawn from the first half as ``iad eval`` draws them, and the second half's good
images (never a reference) join the test set. The same groups through the benchmark's runner
(``elpv_eval.run``).

    PYTHONPATH=src:experiments python experiments/objects_eval.py OUT [--policy knn --policy embedded] [--shots 1 4 all]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

OBJECTS = ("hazelnut", "transistor", "bottle", "juice_bottle")


def main() -> None:
    import lab
    from elpv_eval import parser, run

    from iad_agent.types import Sample

    ap = parser(["knn", "embedded"])
    ap.add_argument("--cats", default=",".join(OBJECTS))
    a = ap.parse_args()
    halves = [lab.Category(cat.name, cat.pool[::2], list(cat.test) + [Sample(p, cat.name, 0, split="test") for p in cat.pool[1::2]])
              for cat in lab.categories(names=a.cats.split(","))]
    run(a, halves, max_test=200, per_category=True)


if __name__ == "__main__":
    main()

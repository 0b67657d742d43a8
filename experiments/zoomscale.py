"""Run the ``iad`` command with the zoom's reference crops seen at the query crop's scale.

    python experiments/zoomscale.py eval --dataset all --shots 1 --shots 4 --seeds 3 --max-test 60 \\
        --policy knn --policy embedded --policy embedded-fixed-weights --workers 1 --out /work/zoomscale-results/same
    python experiments/zoomscale.py register hazelnut --normals .../hazelnut/train/good --workspace /tmp/x
    python experiments/zoomscale.py compare /work/zoomscale-results/base /work/zoomscale-results/same

Sets :data:`iad_agent.tools.zoom.SAME_SCALE` (off in the package) for this process, then runs
the CLI unchanged: registration's zoom calibration and tool-weight fit, and inspection, all see
the reference crops at the query's scale. ``iad eval`` spawns its workers afresh (they would not
inherit the switch), so ``--workers`` must be 1. ``--off`` runs the package default, for timing
the two through the same script.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

METRICS = ("image_auroc", "balanced_accuracy", "false_alarm_rate", "miss_rate", "tool_calls_per_image", "cpu_ms_per_image_p50")


def _records(folder: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = defaultdict(list)
    for line in (Path(folder) / "records.jsonl").read_text().splitlines():
        r = json.loads(line)
        if r["shots"] != "given":  # deeppcb: no good test images, no AUROC
            out[(r["category"], str(r["shots"]), r["policy"])].append(r)
    return out


def _mean(rs: list[dict], key: str) -> float:
    v = [r[key] for r in rs if r.get(key) is not None]
    return sum(v) / len(v) if v else float("nan")


def compare(before: str, after: str) -> None:
    """Markdown tables: mean over categories, then per category, before -> after; paired seed deltas."""
    b, a = _records(before), _records(after)
    keys = sorted(set(b) & set(a), key=lambda k: (k[1], k[2], k[0]))
    print("| shots | policy | " + " | ".join(METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    for shots, policy in dict.fromkeys((k[1], k[2]) for k in keys):
        ks = [k for k in keys if k[1:] == (shots, policy)]
        cells = [f"{sum(_mean(b[k], m) for k in ks) / len(ks):.3f} → {sum(_mean(a[k], m) for k in ks) / len(ks):.3f}" for m in METRICS]
        print(f"| {shots} | {policy} | " + " | ".join(cells) + " |")
    print()
    print("| category | shots | policy | " + " | ".join(METRICS[:5]) + " | seeds AUROC up / down |")
    print("|---|---|---|" + "---|" * 6)
    for k in keys:
        by_seed = {r["seed"]: r["image_auroc"] for r in b[k]}
        d = [r["image_auroc"] - by_seed[r["seed"]] for r in a[k] if r["seed"] in by_seed]
        cells = [f"{_mean(b[k], m):.3f} → {_mean(a[k], m):.3f}" for m in METRICS[:5]]
        print(f"| {k[0]} | {k[1]} | {k[2]} | " + " | ".join(cells) + f" | {sum(x > 1e-9 for x in d)} / {sum(x < -1e-9 for x in d)} |")
    for name, recs in (("before", b), ("after", a)):
        build = [r["build_ms"] for k in keys if k[2] == "embedded" for r in recs[k] if r.get("build_ms")]
        print(f"\n{name}: registration wall time per group (embedded): mean {sum(build) / max(len(build), 1) / 1000:.1f} s")


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["compare"]:
        compare(*args[1:3])
        return
    off = "--off" in args
    args = [a for a in args if a != "--off"]
    if args[:1] == ["eval"] and ("--workers" not in args or args[args.index("--workers") + 1] != "1"):
        sys.exit("zoomscale.py: pass --workers 1 (spawned workers would not see the switch)")
    from iad_agent.cli import app
    from iad_agent.tools import zoom

    zoom.SAME_SCALE = not off
    print(f"zoomscale.py: SAME_SCALE={zoom.SAME_SCALE}", file=sys.stderr)
    app(args, prog_name="iad")


if __name__ == "__main__":
    main()

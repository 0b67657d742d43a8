"""Run the ``iad`` command with the zoom's reference crops seen at the query crop's scale.

    python experiments/zoomscale.py eval --dataset all --shots 1 --shots 4 --seeds 3 --max-test 60 \\
        --policy knn --policy embedded --policy embedded-fixed-weights --workers 1 --out /work/zoomscale-results/same
    python experiments/zoomscale.py register hazelnut --normals .../hazelnut/train/good --workspace /tmp/x
    python experiments/zoomscale.py compare /work/zoomscale-results/base /work/zoomscale-results/same
    PYTHONPATH=src:experiments python experiments/zoomscale.py elpv [--off] /work/zoomscale-results/elpv_same

    PYTHONPATH=src:experiments python experiments/zoomscale.py zoom-auroc /work/zoomscale-results/zoom_auroc.jsonl

``zoom-auroc``: the zoom's own evidence, both ways, on the same product and region: each dev
category (seed 0, 1 and 4 shots, 60 test images) is registered once; every test image is zoomed
at the embedded policy's box (the global look's hot spot) against its nearest good image with
the reference crop at the extractor's resolution and at the query's scale; the AUROC of each
zoom score (defective vs good test images) is written per group. No threshold, no gate, no weight.

``elpv``: the unseen check set (``lab.py: elpv_category``; 50 good images as the reference pool,
30 good + 30 defective test cells) through ``iad eval``'s runner: 1 and 4 shots, 3 seeds, the
same three policies; records in the given folder, for ``compare``.

Needs the option, which is not in the package (measured, no gain: ``experiments/README.md``,
*Zoom at the query's scale*); bring it back first with
``git checkout 0f57fa3 -- src/iad_agent/tools/zoom.py src/iad_agent/vision/features.py``.

Sets :data:`iad_agent.tools.zoom.SAME_SCALE` (off by default there) for this process, then runs
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


def elpv(out: str) -> None:
    """ELPV groups through the eval runner (in this process, so the switch holds)."""
    import lab

    from iad_agent.eval import plan, runner

    cat = lab.elpv_category()
    test = plan.cap_test(cat.test, 60)
    config = plan.EvalConfig(datasets=[], shots=[1, 4], seeds=3, policies=["knn", "embedded", "embedded-fixed-weights"],
                             max_test=60, examples=False)
    groups = [plan.Group("elpv", cat.pool[0].parent, "elpv", k, seed, "held-out", refs, test, list(config.policies))
              for k, seed, refs in lab.groups(cat, shots=(1, 4), seeds=3)]
    Path(out).mkdir(parents=True, exist_ok=True)
    runner.run_groups(groups, config, Path(out), workers=1, threads=1)


def zoom_auroc(out: str) -> None:
    import time

    import lab

    from iad_agent.episode import PreparedQuery
    from iad_agent.eval import plan
    from iad_agent.imageio import load_image
    from iad_agent.product import Product
    from iad_agent.tools.zoom import CONTEXT, MIN_SIZE, zoom_evidence_many
    from iad_agent.vision.scoring import _auroc

    with open(out, "a") as f:
        for cat in lab.categories():
            test = plan.cap_test(cat.test, 60)
            for k, seed, refs in lab.groups(cat, shots=(1, 4), seeds=1):
                c0 = time.process_time()
                product = Product.build(cat.name, refs, fpr=0.05, allow_mixed_sizes=True)
                jobs, labels, glob = [], [], []
                for sample in test:
                    q = PreparedQuery(product, load_image(sample.image_path))
                    box = q.look.hot_box.clamped(MIN_SIZE).expanded(CONTEXT)
                    jobs.append((q.image, box, [i for i, _ in product.bank.nearest(q.grid, 1)]))
                    labels.append(sample.is_anomalous)
                    glob.append(q.look.score)
                row = {"category": cat.name, "shots": k, "seed": seed, "mixed_geometry": product.gate.mixed_geometry,
                       "global": _auroc([g for g, y in zip(glob, labels) if not y], [g for g, y in zip(glob, labels) if y])}
                for name, same in (("zoom_default", False), ("zoom_same_scale", True)):
                    sc = [r["score"] for r in zoom_evidence_many(product, jobs, same_scale=same)]
                    row[name] = _auroc([v for v, y in zip(sc, labels) if not y], [v for v, y in zip(sc, labels) if y])
                row["cpu_s"] = round(time.process_time() - c0, 1)
                print(json.dumps(row), file=f, flush=True)
                print(json.dumps(row), file=sys.stderr)


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["compare"]:
        compare(*args[1:3])
        return
    if args[:1] == ["zoom-auroc"]:  # both ways in one run: the switch is not read
        zoom_auroc(args[1])
        return
    off = "--off" in args
    args = [a for a in args if a != "--off"]
    if args[:1] == ["eval"] and ("--workers" not in args or args[args.index("--workers") + 1] != "1"):
        sys.exit("zoomscale.py: pass --workers 1 (spawned workers would not see the switch)")
    from iad_agent.cli import app
    from iad_agent.tools import zoom

    zoom.SAME_SCALE = not off
    print(f"zoomscale.py: SAME_SCALE={zoom.SAME_SCALE}", file=sys.stderr)
    if args[:1] == ["elpv"]:
        elpv(args[1])
        return
    app(args, prog_name="iad")


if __name__ == "__main__":
    main()

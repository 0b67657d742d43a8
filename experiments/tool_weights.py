"""Tool weights learned from synthetic defects (issue 11, item 3a): what is chosen, what it costs, and a check on test.

For every (category, shots, seed) group of ``iad eval`` (same references), the product is
registered (which now learns ``w_zoom`` / ``w_compare``: ``iad_agent.vision.tool_weights``),
and the chosen weights, the synthetic-defect AUROC of every candidate pair, the number of
uncertain items (those the tools were run on) and the CPU time of the fit are written out.

With ``--test`` the test images are read the same way (global ratio; zoom and comparison
evidence where the gate opens) and each candidate pair's *test* AUROC and balanced accuracy is
computed from those readings, beside the learned pair's. This is a check only: no choice is made
on it (the learned pair comes from good images and synthetic defects alone).

    python experiments/tool_weights.py --shots 1 --shots 4 --seeds 3 --max-test 60 --test \
        --out /work/toolw-results/fit.jsonl
    PYTHONPATH=src:experiments python experiments/tool_weights.py --elpv --shots 1 --shots 4 --seeds 3 \
        --max-test 60 --test --out /work/toolw-results/fit_elpv.jsonl
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shots", action="append", default=[])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--category", action="append", default=None)
    ap.add_argument("--max-test", type=int, default=60)
    ap.add_argument("--test", action="store_true", help="also read the test images (check only)")
    ap.add_argument("--elpv", action="store_true", help="the unseen check set ELPV (experiments/lab.py: elpv_category) instead")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from iad_agent.eval.plan import EvalConfig, available_datasets, parse_shots, plan
    from iad_agent.product import Product
    from iad_agent.tools.priors import domain_priors
    from iad_agent.vision import tool_weights as tw

    config = EvalConfig(datasets=available_datasets(), categories=args.category, shots=parse_shots(args.shots or ["1"]),
                        seeds=args.seeds, policies=["embedded"], max_test=args.max_test, examples=False)
    fit_cpu: list[float] = []
    original = tw.fit_tool_weights
    kept: dict = {}

    def timed_fit(product, material):  # noqa: ANN001, ANN202
        c0 = time.process_time()
        kept["items"] = tw.read_items(product, material) if material and material.get("grids") else []
        original(product, material)
        fit_cpu.append(time.process_time() - c0)  # includes reading the items twice; halved below

    tw.fit_tool_weights = timed_fit  # registration imports it at call time
    done = set()
    if args.out.exists():
        done = {(r["category"], str(r["shots"]), r["seed"]) for r in map(json.loads, args.out.read_text().splitlines())}
    for group in (elpv_groups(config) if args.elpv else plan(config)):
        if (group.category, str(group.shots), group.seed) in done:
            continue
        c0 = time.process_time()
        product = Product.build(group.category, group.references, fpr=config.fpr, priors=domain_priors(group.category),
                                allow_mixed_sizes=True)
        build_cpu = time.process_time() - c0
        gate = product.gate
        items = kept.get("items", [])
        _, _, syn_aurocs = tw.choose_weights(items, gate.band_low, gate.band_high) if items else (0, 0, {})
        row = {"category": group.category, "shots": group.shots, "seed": group.seed, "w_zoom": gate.w_zoom,
               "w_compare": gate.w_compare, "weights_from": gate.weights_from, "texture": gate.texture,
               "aligned": gate.aligned_informative, "n_items": len(items),
               "n_uncertain": sum(i.zoom is not None for i in items), "synthetic_auroc": syn_aurocs,
               "fit_cpu_s": round(fit_cpu[-1] / 2, 3) if fit_cpu else 0.0, "build_cpu_s": round(build_cpu, 3)}
        if args.test:
            row.update(test_check(product, group.test, gate))
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps({k: v for k, v in row.items() if k not in ("synthetic_auroc", "test_auroc", "test_bacc")}), flush=True)


def elpv_groups(config):  # noqa: ANN001, ANN201
    """ELPV groups with the k-shot protocol of ``iad eval`` (references drawn from its good pool)."""
    from types import SimpleNamespace

    from iad_agent.eval.plan import cap_test, draw_references
    from lab import elpv_category

    cat = elpv_category()
    test = cap_test(cat.test, config.max_test) if config.max_test else cat.test
    return [SimpleNamespace(category="elpv", shots=shots, seed=seed, test=test,
                            references=draw_references(cat.pool, shots, seed, "elpv"))
            for shots in config.shots for seed in range(config.seeds)]


def test_check(product, test, gate) -> dict:  # noqa: ANN001
    """Each candidate pair's AUROC / balanced accuracy on the test images, from their tool readings."""
    from iad_agent.imageio import load_image
    from iad_agent.vision import tool_weights as tw
    from iad_agent.vision.scoring import _auroc
    from iad_agent.vision.similarity import self_similarity_map

    items = []
    for sample in test:
        image = load_image(sample.image_path, product.max_side)
        grid = product.extractor([image])[0]
        material = {"grids": [grid], "exclude": [None], "knn": [product.bank.patch_distances(grid)],
                    "self": [self_similarity_map(grid) if product.bank.scoring.uses_self else None],
                    "defect": [bool(sample.is_anomalous)], "images": [lambda im=image: im]}
        items.extend(tw.read_items(product, material))
    neg = [i for i in items if not i.defect]
    pos = [i for i in items if i.defect]
    auroc, bacc = {}, {}
    for wz in tw.ZOOM_WEIGHTS:
        for wc in tw.COMPARE_WEIGHTS:
            key = f"{wz:g},{wc:g}"
            n = [tw.final_ratio(i, wz, wc, gate.band_low, gate.band_high) for i in neg]
            p = [tw.final_ratio(i, wz, wc, gate.band_low, gate.band_high) for i in pos]
            auroc[key] = round(_auroc(n, p), 4)
            bacc[key] = round(0.5 * (np.mean([v <= 1 for v in n]) + np.mean([v > 1 for v in p])), 4) if n and p else None
    return {"test_auroc": auroc, "test_bacc": bacc}


if __name__ == "__main__":
    main()

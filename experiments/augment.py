"""Issue 11 item 2: does bank augmentation help, and does the good-images-only choice pick it?

For each (category, shots, seed) of the ``iad eval`` protocol (and ELPV, the unseen check set),
the references' feature grids and the views of every candidate augmentation set are extracted
with the package's extractor; then per candidate:

* ``sep``: the criterion (:func:`augment_lib.choose_augmentation`):
  synthetic AUROC and log gap from the good references and synthetic defects made from them;
* ``test``: the test images' plain nearest-neighbour image AUROC against the augmented bank
  (all patches, no coreset) — used only to judge the criterion, never to choose.

    python experiments/augment.py --out /work/augment-results/aug.jsonl --max-test 60 [--elpv] [--cats grid ...]
    python experiments/augment.py --summary /work/augment-results/aug.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from lab import categories, groups  # noqa: E402

from iad_agent.eval.metrics import image_auroc  # noqa: E402
from iad_agent.eval.plan import cap_test  # noqa: E402
from iad_agent.imageio import load_image  # noqa: E402
from augment_lib import AUGMENTATIONS, _min_distances, choose_augmentation, extract_views, pick  # noqa: E402
from iad_agent.vision.features import FeatureConfig, FeatureExtractor  # noqa: E402
from iad_agent.vision.normal_bank import image_score  # noqa: E402


def run(args: argparse.Namespace) -> None:
    done = set()
    out = Path(args.out)
    if out.exists():
        done = {(r["category"], r["shots"], r["seed"]) for r in map(json.loads, out.read_text().splitlines())}
    cands = ["none", *args.cands_set] if args.cands_set else list(AUGMENTATIONS)
    for cat in categories(include_elpv=args.elpv, names=args.cats or None):
        test = cap_test(cat.test, args.max_test)
        ex = FeatureExtractor(FeatureConfig())
        test_grids = None
        for k, seed, refs in groups(cat, shots=tuple(args.shots), seeds=args.seeds):
            if (cat.name, k, seed) in done:
                continue
            t0 = time.process_time()
            imgs = [load_image(p) for p in refs]
            grids = list(ex(imgs))
            views = extract_views(imgs, ex, cands)
            choice = choose_augmentation(grids, imgs, ex, views=views, candidates=cands)
            t_choose = time.process_time() - t0
            if test_grids is None:
                test_grids = [np.asarray(g, np.float32) for g in ex([load_image(s.image_path) for s in test])]
            c = grids[0].shape[-1]
            flat = np.ascontiguousarray(np.concatenate([g.reshape(-1, c) for g in test_grids]))
            bounds = np.cumsum([0] + [g.shape[0] * g.shape[1] for g in test_grids])
            plain = [_min_distances(flat, np.asarray(g, np.float32).reshape(-1, c)) for g in grids]
            by_view = [{v: _min_distances(flat, p) for v, p in vs.items()} for vs in views]
            y = [int(s.is_anomalous) for s in test]
            aurocs = {}
            for name in cands:
                d = np.minimum.reduce([plain[j] for j in range(len(grids))]
                                      + [by_view[j][v] for j in range(len(grids)) for v in AUGMENTATIONS[name]])
                scores = [image_score(d[bounds[i]:bounds[i + 1]]) for i in range(len(test))]
                aurocs[name] = round(image_auroc(y, scores), 4)
            rec = {"category": cat.name, "shots": k, "seed": seed, "chosen": choice.name, "sep": choice.separation,
                   "test": aurocs, "choose_cpu_s": round(t_choose, 2)}
            print(json.dumps(rec), flush=True)
            with out.open("a") as fh:
                fh.write(json.dumps(rec) + "\n")


def summary(path: str, margin: float, gap_margin: float, max_level: float, only: list[str] | None = None) -> None:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines()]
    cands = [c for c in AUGMENTATIONS if c in rows[0]["test"] and (not only or c == "none" or c in only)]
    for k in sorted({r["shots"] for r in rows}, key=str):
        sub = [r for r in rows if r["shots"] == k]
        print(f"\n## shots {k}: mean test knn image AUROC per candidate (and the chosen one), by category")
        print("| category | " + " | ".join(cands) + " | chosen | choices |")
        print("|---" * (len(cands) + 3) + "|")
        cats = sorted({r["category"] for r in sub})
        tot = {c: [] for c in [*cands, "chosen"]}
        for cat in cats:
            rs = [r for r in sub if r["category"] == cat]
            means = {c: np.mean([r["test"][c] for r in rs]) for c in cands}
            chosen = [pick({n: tuple(v) for n, v in r["sep"].items() if n in cands}, margin, gap_margin,
                           max_level if r["shots"] != 1 else float("inf")) for r in rs]
            means["chosen"] = np.mean([r["test"][ch] for r, ch in zip(rs, chosen)])
            for c in tot:
                tot[c].append(means[c])
            print(f"| {cat} | " + " | ".join(f"{means[c]:.3f}" for c in cands) + f" | {means['chosen']:.3f} | {','.join(chosen)} |")
        print("| **mean** | " + " | ".join(f"{np.mean(tot[c]):.3f}" for c in cands) + f" | {np.mean(tot['chosen']):.3f} | |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--out")
    ap.add_argument("--summary")
    ap.add_argument("--max-test", type=int, default=60)
    ap.add_argument("--shots", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cats", nargs="*")
    ap.add_argument("--elpv", action="store_true")
    ap.add_argument("--cands-set", nargs="*", help="candidate sets (default: all of AUGMENTATIONS)")
    ap.add_argument("--margin", type=float, default=0.02)
    ap.add_argument("--gap-margin", type=float, default=0.25)
    ap.add_argument("--max-level", type=float, default=0.5)
    a = ap.parse_args()
    if a.summary:
        summary(a.summary, a.margin, a.gap_margin, a.max_level, a.cands_set)
    else:
        run(a)

"""One good image: can the query tell an aligned product from a posed one? (issue 11 item 4; scratch)

    PYTHONPATH=src:experiments OMP_NUM_THREADS=1 python experiments/aligned_one.py dump --out /work/thr/aligned.jsonl
    python experiments/aligned_one.py summary /work/thr/aligned.jsonl

At one shot the threshold comes from augmented views of the good image (crops of 88–96 %, turned by up
to 8°) and synthetic defects made from them. For aligned line art (DeepPCB) a turned view is far from
any real second capture, and the threshold sits 1.8× above the good boards (``pcb_repaired.py``). Here,
per one-shot group (dev products × 3 seeds, ELPV, and every DeepPCB pair with its repaired board as the
good part), with the package's registration:

* ``gentle``: views without a turn (crops of 96–99 %, ±10 % light), scored as the package scores a query;
* ``align``: for each scored image, the share of its patches whose nearest-neighbour distance is matched
  (within 10 %) at the same place (±1 patch) of the good image — 1 for a part that sits where the good
  part sat, low for a turned part or a texture seen at another phase;
* the current threshold, the pool of other good images (never references) and the test images.

Nothing is fitted on test labels; ``summary`` fits one constant per rule on the pools (other good images).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

import calib  # noqa: E402
from iad_agent.imageio import load_image  # noqa: E402
from iad_agent.vision.normal_bank import aligned_distance, image_score  # noqa: E402
from iad_agent.vision.similarity import self_similarity_map  # noqa: E402

REPAIRED = Path("/work/thr/pcb_repaired")


def gentle_views(img: Image.Image, n: int = 8, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    w, h = img.size
    out = []
    for _ in range(n):
        frac = float(rng.uniform(0.96, 0.99))
        cw, ch = w * frac, h * frac
        x0, y0 = float(rng.uniform(0, w - cw)), float(rng.uniform(0, h - ch))
        v = img.resize((w, h), Image.Resampling.BILINEAR, box=(x0, y0, x0 + cw, y0 + ch))
        gain = float(rng.uniform(0.9, 1.1))
        out.append(Image.eval(v, lambda px, g=gain: min(255, int(px * g))))
    return out


def alignment(bank, grid: np.ndarray) -> float:  # noqa: ANN001
    knn = bank.patch_distances(grid)
    al = aligned_distance(grid, bank.grids[0].astype(np.float32))
    return float((al <= 1.1 * knn + 1e-6).mean())


def scored(bank, path: Path) -> tuple[float, float]:  # noqa: ANN001
    s, config = bank.scoring, bank.config
    g = calib.grid_of(path, config)
    m = s.fuse(bank.patch_distances(g), calib.self_map_of(path, config, s.self_raw) if s.uses_self else None)
    return image_score(m), alignment(bank, g)


def group_row(cat: str, seed: int, ref: Path, pool: list[Path], test: list[tuple[Path, int]]) -> dict:
    bank, cal = calib.learned_bank([ref], config=calib.package_config([ref]))
    s, config = bank.scoring, bank.config
    views = gentle_views(load_image(ref))
    grids, raws = calib.extractor(config).with_raw(views)
    gentle = [image_score(s.fuse(bank.patch_distances(np.asarray(g, np.float32)),
                                 self_similarity_map(np.asarray(r if s.self_raw else g, np.float32)) if s.uses_self else None))
              for g, r in zip(grids, raws)]
    row = dict(cat=cat, seed=seed, w=s.self_weight, threshold=cal.threshold, held=cal.global_scores, gentle=gentle,
               syn_median=cal.synthetic_median, split=cal.split_score)
    for name, items in (("pool", [(p, 0) for p in pool]), ("test", test)):
        sc = [scored(bank, p) + (int(y),) for p, y in items]
        row[name] = [x[0] for x in sc]
        row[name + "_align"] = [x[1] for x in sc]
        row[name + "_y"] = [x[2] for x in sc]
    return row


def pcb_groups(n: int):  # noqa: ANN201 - iterator of (cat, seed, ref, pool, test)
    sys.argv = sys.argv[:1]
    from pcb_repaired import repaired

    from iad_agent.datasets import load_dataset
    from iad_agent.eval.plan import default_root, split_dataset

    split = split_dataset(load_dataset("deeppcb", default_root("deeppcb")))
    REPAIRED.mkdir(parents=True, exist_ok=True)
    for i, smp in enumerate(split.test[:: max(1, len(split.test) // n)][:n]):
        good = repaired(smp, REPAIRED)
        yield "deeppcb", i, Path(smp.references[0]), [good], [(Path(smp.image_path), 1), (good, 0)]


def dump(a: argparse.Namespace) -> None:
    if a.gentle_learn:  # registration itself learns from gentle views (scoring weight, synthetic defects, threshold)
        from iad_agent.vision import learn as learn_module

        learn_module.augmented_views = gentle_views
    from iad_agent.eval.plan import evenly_spaced
    from iad_agent.eval.runner import set_threads

    set_threads(1)
    with open(a.out, "a") as fh:
        if not a.pcb_only:
            for cat, pool, test in calib.categories(a.cats, True, a.max_bad):
                from iad_agent.eval.plan import draw_references

                for seed in range(3):
                    refs = draw_references(pool, 1, seed, cat)
                    others = evenly_spaced([p for p in pool if p not in set(refs)], 30)
                    calib.emit(fh, group_row(cat, seed, Path(refs[0]), others,
                                             [(Path(t.image_path), int(t.label)) for t in test]))
        for cat, seed, ref, pool, test in pcb_groups(a.pcb):
            calib.emit(fh, group_row(cat, seed, ref, pool, test))


def summary(a: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in open(a.path)]
    cats = sorted({r["cat"] for r in rows})
    z = 1.6448536269514722

    def rule_gentle(r: dict) -> float:
        return float(np.mean(r["gentle"])) * (1 + z * 0.05)

    # the align statistic of good parts per category
    print("category | pool align median (q10-q90) | test good align | test bad align | ref-pool ratio q95/current")
    for c in cats:
        rs = [r for r in rows if r["cat"] == c]
        pa = np.concatenate([r["pool_align"] for r in rs])
        ty = np.concatenate([r["test_y"] for r in rs])
        ta = np.concatenate([r["test_align"] for r in rs])
        ratio = np.concatenate([np.array(r["pool"]) / r["threshold"] for r in rs])
        rg = np.concatenate([np.array(r["pool"]) / rule_gentle(r) for r in rs])
        print(f"{c:14s} {np.median(pa):.2f} ({np.quantile(pa, .1):.2f}-{np.quantile(pa, .9):.2f}) | "
              f"{np.median(ta[ty == 0]) if (ty == 0).any() else float('nan'):.2f} | {np.median(ta[ty == 1]):.2f} | "
              f"pool q95 / current {np.quantile(ratio, .95):.2f}, / gentle rule {np.quantile(rg, .95):.2f}; "
              f"gentle mean / current {np.median([np.mean(r['gentle']) / r['threshold'] for r in rs]):.2f}")


def auroc_cmd(a: argparse.Namespace) -> None:
    """Test image AUROC per product of one or more dumps (DeepPCB: score / threshold pooled over its pairs)."""
    from iad_agent.vision.scoring import _auroc

    for path in a.paths:
        rows = [json.loads(line) for line in open(path)]
        out = {}
        for c in sorted({r["cat"] for r in rows}):
            rs = [r for r in rows if r["cat"] == c]
            if c == "deeppcb":
                v = np.concatenate([np.array(r["test"]) / r["threshold"] for r in rs])
                y = np.concatenate([r["test_y"] for r in rs])
                out[c] = _auroc(v[y == 0], v[y == 1])
            else:
                out[c] = float(np.mean([_auroc(np.array(r["test"])[np.array(r["test_y"]) == 0],
                                               np.array(r["test"])[np.array(r["test_y"]) == 1]) for r in rs]))
            out[c + " w"] = float(np.mean([r["w"] for r in rs]))
        dev = [v for k, v in out.items() if " " not in k and k not in ("elpv", "deeppcb")]
        print(path, f"dev mean {np.mean(dev):.3f}", " ".join(f"{k} {v:.3f}" for k, v in out.items()))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("dump")
    d.add_argument("--out", required=True)
    d.add_argument("--cats", default="", type=lambda v: v.split(",") if v else None)
    d.add_argument("--max-bad", type=int, default=60)
    d.add_argument("--pcb", type=int, default=24)
    d.add_argument("--pcb-only", action="store_true")
    d.add_argument("--gentle-learn", action="store_true")
    sub.add_parser("summary").add_argument("path")
    sub.add_parser("auroc").add_argument("paths", nargs="+")
    a = ap.parse_args()
    {"dump": dump, "summary": summary, "auroc": auroc_cmd}[a.cmd](a)


if __name__ == "__main__":
    main()

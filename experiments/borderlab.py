"""How the fused map treats the self-similarity border (issue 11, magnetic tile): variants on cached maps.

For each (category, shots, seed) of the ``iad eval`` protocol, registers the product once
(package code: scoring weight and levels learned from good images), caches each test image's
plain nearest-neighbour map and self-similarity map, then re-fuses them under border variants
and reports image AUROC (top-1 % score) and pooled pixel AUROC (maps upsampled as the package
does). No setting is chosen here on test labels: this shows *why*; the candidate rule is then
checked with ``iad eval``.

    python experiments/borderlab.py --dataset magnetic_tile --shots 4 --seeds 2 --max-test 60
"""

from __future__ import annotations

import argparse
import pickle
from pathlib import Path

import numpy as np


def auroc(y, s):
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def prepared_tests(dataset, category, shots, seed, max_test):
    """``(product, [(sample, prepared query, pixel size, downsampled mask)])`` of one ``iad eval``
    group: the product registered from the drawn references, each capped test image prepared by the
    package (also used by ``mapnorm.py``)."""
    from iad_agent.datasets import load_dataset
    from iad_agent.eval.plan import cap_test, default_root, draw_references, split_dataset
    from iad_agent.eval.records import downsample_size
    from iad_agent.inspector import Inspector
    from iad_agent.policies import resolve_policy
    from iad_agent.product import Product

    samples = [s for s in load_dataset(dataset, default_root(dataset)) if s.category == category]
    split = split_dataset(samples)
    refs = draw_references(split.pool, shots if shots == "all" else int(shots), seed, category)
    product = Product.build(category, refs, fpr=0.05, allow_mixed_sizes=True)
    insp = Inspector(product, resolve_policy("knn").policy, {})
    out = []
    for s in cap_test(split.test, max_test):
        p = insp.prepare(s.image_path)
        size = downsample_size(p.image.width, p.image.height)
        out.append((s, p, size, s.ground_truth_mask(size=size)))
    return product, out


def collect(dataset, category, shots, seed, max_test, cache: Path):
    f = cache / f"{dataset}_{category}_{shots}_{seed}_{max_test}.pkl"
    if f.exists():
        return pickle.loads(f.read_bytes())
    from iad_agent.vision.similarity import self_similarity_map

    product, tests = prepared_tests(dataset, category, shots, seed, max_test)
    rows = []
    for s, p, _, gt in tests:
        knn = product.bank.patch_distances(p.grid)
        rows.append(dict(label=int(s.is_anomalous), type=s.defect_type, gt=gt, knn=knn, self=self_similarity_map(p.grid),
                         size=p.image.size, mask=s.mask_path is not None or not s.is_anomalous))
    out = dict(scoring=product.bank.scoring, rows=rows)
    cache.mkdir(parents=True, exist_ok=True)
    f.write_bytes(pickle.dumps(out))
    return out


def fuse(sc, knn, self_, variant):
    b = 2
    k = knn / sc.knn_level
    w = sc.self_weight
    if w == 0:
        return k
    s = self_ / sc.self_level
    h, wd = k.shape
    inner = np.zeros((h, wd), bool)
    inner[b:-b, b:-b] = True
    if variant == "zero":
        return (1 - w) * k + w * s
    if variant == "knn":
        return np.where(inner, (1 - w) * k + w * s, k)
    if variant == "edge":  # self term of the nearest inner patch
        yy = np.clip(np.arange(h), b, h - b - 1)
        xx = np.clip(np.arange(wd), b, wd - b - 1)
        se = s[np.ix_(yy, xx)]
        return (1 - w) * k + w * se
    if variant == "knnonly":
        return k
    raise ValueError(variant)


def main() -> None:
    from iad_agent.eval.records import downsample_map
    from iad_agent.vision.normal_bank import image_score, upsample_map

    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="magnetic_tile")
    ap.add_argument("--category", default="magnetic_tile")
    ap.add_argument("--shots", default=["4"], nargs="+")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--max-test", type=int, default=60)
    ap.add_argument("--variants", nargs="+", default=["zero", "knn", "edge", "knnonly"])
    ap.add_argument("--sigma", type=float, nargs="+", default=[4.0], help="heat-map blur (upsample_map's sigma)")
    ap.add_argument("--cache", default="/work/detect4-results/borderlab")
    a = ap.parse_args()
    for shots in a.shots:
        for seed in range(a.seeds):
            d = collect(a.dataset, a.category, shots, seed, a.max_test, Path(a.cache))
            sc, rows = d["scoring"], d["rows"]
            line = f"{a.category} {shots} s{seed} w={sc.self_weight}:"
            for v, sigma in [(v, sg) for v in a.variants for sg in a.sigma]:
                maps = [fuse(sc, r["knn"], r["self"], v) for r in rows]
                ia = auroc([r["label"] for r in rows], [image_score(m) for m in maps])
                pix = [(r, downsample_map(upsample_map(m, *r["size"], sigma=sigma), r["gt"].shape[::-1])) for r, m in zip(rows, maps)
                       if r["gt"] is not None and r["mask"]]
                pa = auroc(np.concatenate([r["gt"].ravel() > 0 for r, _ in pix]), np.concatenate([m.ravel() for _, m in pix])) if pix else float("nan")
                from iad_agent.eval.metrics import aupro

                pro = aupro([r["gt"] > 0 for r, _ in pix], [m for _, m in pix], fpr_limit=0.3) if pix else None
                line += f"  {v} s{sigma:g}: img {ia:.3f} pix {pa:.3f} pro {pro or float('nan'):.3f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()

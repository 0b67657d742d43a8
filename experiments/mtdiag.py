"""Magnetic tile diagnosis (issue 11): per-defect-type pixel / image AUROC of the embedded look.

Registers a product the way ``iad eval`` does (same reference draw), prepares each test
image and reports, per defect type, pooled pixel AUROC of the fused and plain heat maps,
the mean per-image pixel AUROC (how well the map ranks within an image, free of
between-image level shifts) and image AUROC. Optional overlays of a few maps.

    python experiments/mtdiag.py --dataset magnetic_tile --shots 4 --seed 0 --max-test 60 [--png DIR]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import numpy as np


def auroc(y, s):
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def main() -> None:
    from iad_agent.datasets import load_dataset
    from iad_agent.eval.plan import cap_test, default_root, draw_references, split_dataset
    from iad_agent.eval.records import downsample_map, downsample_size
    from iad_agent.inspector import Inspector
    from iad_agent.policies import resolve_policy
    from iad_agent.product import Product

    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="magnetic_tile")
    ap.add_argument("--category", default=None)
    ap.add_argument("--shots", default="4")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-test", type=int, default=60)
    ap.add_argument("--png", default=None)
    ap.add_argument("--photo", default="", help="per-image photometric normalisation: '', 'meanstd', 'mean'")
    a = ap.parse_args()
    if a.photo:
        from iad_agent.vision import features as F

        orig = F.FeatureExtractor._to_array

        def to_array(self, images, size, _o=orig):
            out = []
            for img in images:
                x = np.asarray(img.convert("RGB"), np.float32)
                g = x.mean(-1)
                m, sd = g.mean(), g.std() + 1e-3
                if a.photo == "meanstd":
                    x = (x - m) / sd * 30.0 + 90.0
                else:
                    x = x - m + 90.0
                from PIL import Image as I
                out.append(I.fromarray(np.clip(x, 0, 255).astype(np.uint8)))
            return _o(self, out, size)

        F.FeatureExtractor._to_array = to_array
    samples = load_dataset(a.dataset, default_root(a.dataset))
    cats = sorted({s.category for s in samples})
    cat = a.category or cats[0]
    split = split_dataset([s for s in samples if s.category == cat])
    shots = a.shots if a.shots == "all" else int(a.shots)
    refs = draw_references(split.pool, shots, a.seed, cat)
    test = cap_test(split.test, a.max_test)
    t0 = time.process_time()
    product = Product.build(cat, refs, fpr=0.05, allow_mixed_sizes=True)
    print(f"register cpu {time.process_time() - t0:.1f}s scoring {product.bank.scoring} cfg {product.bank.config}")
    insp = Inspector(product, resolve_policy("knn").policy, {})
    rows = []
    per = defaultdict(lambda: defaultdict(list))
    for s in test:
        p = insp.prepare(s.image_path)
        size = downsample_size(p.image.width, p.image.height)
        gt = s.ground_truth_mask(size=size)
        fused = downsample_map(p.heatmap, size)
        plain = downsample_map(p.plain_heatmap, size)
        dt = s.defect_type if s.is_anomalous else "good"
        rows.append((dt, p.look.score, p.look.plain.score, gt, fused, plain, p.image.size))
    types = sorted({r[0] for r in rows} - {"good"})
    goods = [r for r in rows if r[0] == "good"]
    print(f"{'type':12s} n  imgAUC(f/knn)  pixAUC pooled vs good (f/knn)  per-image pixAUC (f/knn)")
    allpix = {0: [], 1: []}
    for t in types + ["all"]:
        bad = [r for r in rows if r[0] == t] if t != "all" else [r for r in rows if r[0] != "good"]
        ia = [auroc([0] * len(goods) + [1] * len(bad), [r[k] for r in goods + bad]) for k in (1, 2)]
        pp = []
        for k in (4, 5):
            y = np.concatenate([r[3].ravel() > 0 for r in goods + bad])
            sc = np.concatenate([r[k].ravel() for r in goods + bad])
            pp.append(auroc(y, sc))
        pi = [np.nanmean([auroc(r[3].ravel() > 0, r[k].ravel()) for r in bad]) for k in (4, 5)]
        print(f"{t:12s} {len(bad):3d} {ia[0]:.3f}/{ia[1]:.3f}   {pp[0]:.3f}/{pp[1]:.3f}   {pi[0]:.3f}/{pi[1]:.3f}")
    # where the good pixels' high values come from: good images vs normal parts of defective images
    g = np.concatenate([r[4].ravel() for r in goods])
    nb = np.concatenate([r[4][~(r[3] > 0)].ravel() for r in rows if r[0] != "good"])
    ab = np.concatenate([r[4][r[3] > 0].ravel() for r in rows if r[0] != "good"])
    print("fused map quantiles 50/90/99: good imgs", np.quantile(g, [.5, .9, .99]).round(2),
          "normal px of bad", np.quantile(nb, [.5, .9, .99]).round(2), "defect px", np.quantile(ab, [.5, .9, .99]).round(2))
    if a.png:
        import os

        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from PIL import Image

        os.makedirs(a.png, exist_ok=True)
        for t in types + ["good"]:
            sel = [(s, r) for s, r in zip(test, rows) if r[0] == t][:4]
            fig, ax = plt.subplots(3, len(sel), figsize=(3 * len(sel), 9), squeeze=False)
            for j, (s, r) in enumerate(sel):
                ax[0, j].imshow(Image.open(s.image_path).convert("L"), cmap="gray")
                ax[1, j].imshow(r[4], vmin=0, vmax=3)
                ax[1, j].set_title(f"score {r[1]:.2f}")
                if r[3] is not None:
                    ax[2, j].imshow(r[3])
            fig.savefig(f"{a.png}/{t}.png", dpi=60)
            plt.close(fig)


if __name__ == "__main__":
    main()

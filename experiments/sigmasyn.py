"""Would synthetic defects choose the heat map's blur? (issue 11, magnetic tile pixel AUROC)

Registers a product as ``iad eval`` does, re-runs ``vision.learn.learn`` with its defect
makers wrapped to keep their masks, fuses each synthetic defect's maps with the product's
scoring and reports the pooled pixel AUROC of the synthetic defects (held-out good maps as
negatives) for each blur ``sigma`` of ``upsample_map``. Good images only: nothing here
reads a test label.

    python experiments/sigmasyn.py --dataset magnetic_tile --category magnetic_tile --shots 4 --sigma 4 8 16 32
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    from sklearn.metrics import roc_auc_score

    import iad_agent.vision.learn as learn_mod
    from iad_agent.datasets import load_dataset
    from iad_agent.eval.plan import default_root, draw_references, split_dataset
    from iad_agent.product import Product
    from iad_agent.vision.normal_bank import upsample_map
    from iad_agent.vision.synthetic import DEFECT_MAKERS

    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="magnetic_tile")
    ap.add_argument("--category", default="magnetic_tile")
    ap.add_argument("--shots", nargs="+", default=["4"])
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--sigma", type=float, nargs="+", default=[4, 8, 16, 32])
    ap.add_argument("--border", nargs="+", default=["zero"], help="zero: the fused map as is; knn: border rings by the knn term alone")
    a = ap.parse_args()
    samples = [s for s in load_dataset(a.dataset, default_root(a.dataset)) if s.category == a.category]
    split = split_dataset(samples)
    masks: list[np.ndarray] = []
    orig = dict(DEFECT_MAKERS)

    def keep(fn):
        def wrapped(img, rng):
            out = fn(img, rng)
            masks.append(out[1])
            return out
        return wrapped

    for shots in a.shots:
        for seed in range(a.seeds):
            refs = draw_references(split.pool, shots if shots == "all" else int(shots), seed, a.category)
            product = Product.build(a.category, refs, fpr=0.05, allow_mixed_sizes=True)
            from iad_agent.imageio import load_image

            masks.clear()
            for k, fn in orig.items():
                DEFECT_MAKERS[k] = keep(fn)
            material: dict = {}
            imgs = {}
            try:
                scoring, _ = learn_mod.learn(product.bank, product.extractor,
                                             lambda i: imgs.setdefault(i, load_image(product.bank.paths[i])), 0.05,
                                             material=material)
            finally:
                DEFECT_MAKERS.update(orig)
            line = f"{a.category} {shots} s{seed} w={scoring.self_weight}:"
            for sigma, border in [(sg, b) for sg in a.sigma for b in a.border]:
                ys, ss = [], []
                j = 0
                for img_fn, knn, slf, bad in zip(material["images"], material["knn"], material["self"], material["defect"]):
                    im = img_fn()
                    m = scoring.fuse(knn, slf if scoring.uses_self else None)
                    if border == "knn" and scoring.uses_self and min(m.shape) > 4:
                        inner = np.zeros(m.shape, bool)
                        inner[2:-2, 2:-2] = True
                        m = np.where(inner, m, knn / scoring.knn_level)
                    heat = upsample_map(m, im.width, im.height, sigma=sigma)[::2, ::2]
                    gt = masks[j][::2, ::2] if bad else np.zeros(heat.shape, bool)
                    j += bool(bad)
                    ys.append(gt.ravel())
                    ss.append(heat.ravel())
                line += f"  s{sigma:g} {border}: {roc_auc_score(np.concatenate(ys), np.concatenate(ss)):.3f}"
            print(line, flush=True)


if __name__ == "__main__":
    main()

"""Per-product brightness standardisation: each image's luminance mean/std moved to the product's own
(the median over its good references), before feature extraction. Global look (fused score, package
``learn``) test AUROC and synthetic AUROC, plain vs standardised, per k-shot group (6 dev categories + ELPV).

    PYTHONPATH=src python experiments/brightness.py dump --out /work/level/bright.jsonl
    PYTHONPATH=src python experiments/score_level.py summary /work/level/bright.jsonl   # variants: plain / std

A good tile shot under other light sits far from 4 references everywhere (magnetic tile: luminance
mean 55–179 between good tiles); products under stable light are nearly unchanged (their images'
mean and std are already the product's).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import calib  # noqa: E402


ROBUST = False
MEAN_ONLY = False


def lum_stats(img: Image.Image) -> tuple[float, float]:
    a = np.asarray(img.convert("L"), np.float32)
    if ROBUST:
        q1, q2, q3 = np.quantile(a, [0.25, 0.5, 0.75])
        return float(q2), float(q3 - q1) / 1.349
    return float(a.mean()), float(a.std())


def standardise(img: Image.Image, target: tuple[float, float]) -> Image.Image:
    a = np.asarray(img, np.float32)
    m, s = lum_stats(img)
    out = (a - m) * (1.0 if MEAN_ONLY else target[1] / max(s, 1.0)) + target[0]
    return Image.fromarray(np.clip(out + 0.5, 0, 255).astype(np.uint8))


def dump(out_path: str, cats: list[str] | None) -> None:
    from iad_agent.eval.plan import draw_references, parse_shots
    from iad_agent.eval.runner import set_threads
    from iad_agent.imageio import load_image
    from iad_agent.vision.learn import learn
    from iad_agent.vision.normal_bank import NormalBank, image_score
    from iad_agent.vision.scoring import _auroc

    set_threads(1)
    with open(out_path, "a") as out:
        for cat, pool, test in calib.categories(cats, True, 60):
            y = np.array([int(smp.label) for smp in test])
            for k in parse_shots(["1", "4", "all"]):
                for seed in range(1 if k == "all" else 3):
                    refs = draw_references(pool, k, seed, cat)
                    config = calib.product_config(refs)
                    ext = calib.extractor(config)
                    ref_imgs = [load_image(p) for p in refs]
                    stats = [lum_stats(im) for im in ref_imgs]
                    target = (float(np.median([s[0] for s in stats])), float(np.median([s[1] for s in stats])))
                    row = dict(cat=cat, k=len(refs), shots=str(k), seed=seed, target=[round(t, 1) for t in target],
                               syn={}, test={}, w={})
                    for arm in ("plain", "std"):
                        tf = (lambda im: im) if arm == "plain" else (lambda im: standardise(im, target))
                        imgs = [tf(im) for im in ref_imgs]
                        bank = NormalBank(config)
                        grids = [calib.grid_of(p, config) for p in refs] if arm == "plain" else list(ext(imgs))
                        bank.add(grids, [str(p) for p in refs])
                        material: dict = {}
                        bank.scoring, _ = learn(bank, ext, lambda i: imgs[i], 0.05, material=material)
                        s = bank.scoring
                        held_syn = [s.fuse(kn, se if s.uses_self else None) for kn, se in zip(material["knn"], material["self"])]
                        d = np.array(material["defect"])
                        v = np.array([image_score(m) for m in held_syn])
                        row["syn"][arm] = round(_auroc(v[~d], v[d]), 4)
                        row["w"][arm] = s.self_weight
                        if arm == "plain":
                            tgrids = [calib.grid_of(smp.image_path, config) for smp in test]
                        else:
                            tgrids = []
                            for i in range(0, len(test), 8):
                                tgrids += list(ext([tf(load_image(smp.image_path)) for smp in test[i:i + 8]]))
                        from iad_agent.vision.similarity import self_similarity_map
                        v = np.array([image_score(s.fuse(bank.patch_distances(g), self_similarity_map(g) if s.uses_self else None))
                                      for g in tgrids])
                        row["test"][arm] = round(_auroc(v[y == 0], v[y == 1]), 4)
                    calib.emit(out, row)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["dump"])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cats", default="")
    ap.add_argument("--variant", choices=["std", "robust", "mean"], default="std")
    a = ap.parse_args()
    global ROBUST, MEAN_ONLY
    ROBUST, MEAN_ONLY = a.variant == "robust", a.variant == "mean"
    dump(a.out, a.cats.split(",") if a.cats else None)


if __name__ == "__main__":
    main()

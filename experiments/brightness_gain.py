"""Brightness matching's form (issue 11): mean and standard deviation (the package) against one gain
(the image scaled so its luminance mean meets the target's: an exposure change). Global look, the
``iad eval`` groups of the products whose good images' light varies, and ELPV.

    PYTHONPATH=src:experiments OMP_NUM_THREADS=1 python experiments/brightness_gain.py VARIANT OUT.jsonl
"""
import json
import sys

import numpy as np

import lab
from iad_agent.eval.plan import cap_test

variant, out = sys.argv[1], sys.argv[2]
if variant == "gain":
    import iad_agent.vision.features as features
    from iad_agent.vision import brightness as br

    def gain_only(pixels, target, stats=None):
        if stats is None:
            stats = float((pixels @ br._LUMA).mean()), 0.0
        pixels *= target[0] / max(stats[0], 1.0)
        np.clip(pixels, 0.0, 255.0, out=pixels)
        return pixels

    features.match_brightness = gain_only
elif variant == "geo":  # the gain between the exposure's (means) and the contrast's (stds), mean met exactly
    import iad_agent.vision.features as features
    from iad_agent.vision import brightness as br

    def geo(pixels, target, stats=None):
        if stats is None:
            lum = pixels @ br._LUMA
            stats = float(lum.mean()), float(lum.std())
        g = np.sqrt(target[0] / max(stats[0], 1.0) * target[1] / max(stats[1], 1.0))
        pixels -= stats[0]
        pixels *= g
        pixels += target[0]
        np.clip(pixels, 0.0, 255.0, out=pixels)
        return pixels

    features.match_brightness = geo
from iad_agent.inspector import Inspector
from iad_agent.policies import resolve_policy
from iad_agent.product import Product

names = sys.argv[3].split(",") if len(sys.argv) > 3 else ["grid", "magnetic_tile", "juice_bottle", "elpv"]
shots = tuple(int(s) if s != "all" else s for s in (sys.argv[4].split(",") if len(sys.argv) > 4 else ["4", "all"]))
with open(out, "a") as f:
    for cat in lab.categories(include_elpv=True, names=names):
        test = cap_test(cat.test, 60 if cat.name == "elpv" else 150)
        for k, seed, refs in lab.groups(cat, shots=shots, seeds=3):
            p = Product.build(cat.name, refs, fpr=0.05, allow_mixed_sizes=True)
            ins = Inspector(p, resolve_policy("knn").policy, {})
            looks = [ins.prepare(s.image_path).look for s in test]
            y = [int(s.is_anomalous) for s in test]
            row = dict(variant=variant, cat=cat.name, shots=k, seed=seed, target=p.bank.config.brightness,
                       y=y, s=[float(l.score) for l in looks], t=float(looks[0].threshold))
            f.write(json.dumps(row) + "\n")
            f.flush()
            g = np.array([a for a, b in zip(row["s"], y) if b == 0])
            a = np.array([a for a, b in zip(row["s"], y) if b == 1])
            print(variant, cat.name, k, seed, row["target"], f"AUROC {lab.auroc(y, row['s']):.3f} FAR {np.mean(g > row['t']):.2f} miss {np.mean(a <= row['t']):.2f}", flush=True)

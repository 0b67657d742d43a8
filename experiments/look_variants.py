"""Small changes to the self term and the image score, on the global look (scratch).

    PYTHONPATH=src:experiments IAD_LAB_CACHE=/work/coarse/cache python experiments/look_variants.py VARIANT cats > OUT.jsonl

VARIANT: ``base``; ``k=N`` (the self term's N-th nearest patch, today 4); ``radius=N`` (the left-out
neighbourhood, today 2); ``blur`` (the image score read on the patch map after a 3×3 mean, everywhere:
held-out, synthetic and test images); ``blurknn`` / ``blurknn1`` (only the nearest-neighbour map after
the 3×3 mean; ``blurknn1``: only with one good image). Rows as ``look_check.py`` (each category's k-shot groups; ``SHOTS=1,4,all`` by default).
"""
import json
import os
import sys

import numpy as np

sys.path.insert(0, "experiments")
import calib  # noqa: E402
from iad_agent.eval.runner import set_threads  # noqa: E402
from iad_agent.vision import learn, normal_bank, scoring, similarity  # noqa: E402

set_threads(1)
variant, cats = sys.argv[1], sys.argv[2].split(",")
image_score = normal_bank.image_score
if variant.startswith("k="):
    similarity.self_similarity_map.__defaults__ = (int(variant[2:]),) + similarity.self_similarity_map.__defaults__[1:]
elif variant.startswith("radius="):
    d = list(similarity.self_similarity_map.__defaults__); d[1] = int(variant[7:])
    similarity.self_similarity_map.__defaults__ = tuple(d)
elif variant == "blur":
    from iad_agent.vision.grid_ops import avg_pool

    def image_score(m, fraction=normal_bank.TOP_FRACTION, _plain=normal_bank.image_score):  # noqa: F811
        m = np.asarray(m, np.float32)
        return _plain(avg_pool(m[None, :, :, None], 3)[0, :, :, 0] if m.ndim == 2 and min(m.shape) >= 3 else m, fraction)

    for mod in (normal_bank, scoring, learn):
        mod.image_score = image_score
elif variant in ("blurknn1", "blurknn"):  # the nearest-neighbour map after a 3×3 mean (blurknn1: with one good image only)
    from iad_agent.vision.grid_ops import avg_pool

    _pd = normal_bank.NormalBank.patch_distances

    def patch_distances(self, grid, *a, **kw):
        m = _pd(self, grid, *a, **kw)
        if variant == "blurknn" or len(self) == 1:
            m = avg_pool(np.asarray(m, np.float32)[None, :, :, None], 3)[0, :, :, 0]
        return m

    normal_bank.NormalBank.patch_distances = patch_distances
    _lo = normal_bank.NormalBank.leave_out_distances

    def leave_out_distances(self, grid, *a, **kw):
        maps = _lo(self, grid, *a, **kw)
        if variant == "blurknn":
            maps = [avg_pool(np.asarray(m, np.float32)[None, :, :, None], 3)[0, :, :, 0] for m in maps]
        return maps

    normal_bank.NormalBank.leave_out_distances = leave_out_distances
elif variant != "base":
    raise SystemExit(f"unknown variant {variant}")

SHOTS = os.environ.get("SHOTS", "1,4,all").split(",")
for cat, k, seed, refs, test, y in calib.groups(cats, True, 100, SHOTS):
    print(json.dumps(dict(variant=variant, cat=cat, shots=str(k), seed=seed, **calib.look_row(refs, test, y, score=image_score))),
          flush=True)

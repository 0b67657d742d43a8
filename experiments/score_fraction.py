"""The image score's top fraction: synthetic-defect AUROC (what a choice from good images sees) and the
global look's test AUROC (the check) for each fraction, per k-shot group (6 dev categories + ELPV).

    PYTHONPATH=src python experiments/score_fraction.py /work/wdiag/frac.jsonl     # ~8 min on cached grids
"""
import sys, json, os
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
import numpy as np
import calib
from calib import grid_of, self_map_of, product_config, extractor, categories
from iad_agent.imageio import load_image
from iad_agent.vision.normal_bank import NormalBank, image_score
from iad_agent.vision.learn import learn
from iad_agent.vision.scoring import _auroc
from iad_agent.eval.plan import draw_references, parse_shots
from iad_agent.eval.runner import set_threads
set_threads(1)
FR = [0.002, 0.005, 0.01, 0.02, 0.05, 0.1]
out = open(sys.argv[1], 'a')
for cat, pool, test in categories(None, True, 60):
    for k in parse_shots(['1', '4']):
        for seed in range(3):
            refs = draw_references(pool, k, seed, cat)
            config = product_config(refs)
            bank = NormalBank(config); bank.add([grid_of(p, config) for p in refs], [str(p) for p in refs])
            imgs = {}
            def image_of(i):
                if i not in imgs: imgs[i] = load_image(refs[i])
                return imgs[i]
            mat = {}
            bank.scoring, cal = learn(bank, extractor(config), image_of, 0.05, material=mat)
            s = bank.scoring
            fused_mat = [s.fuse(kn, se if s.uses_self else None) for kn, se in zip(mat['knn'], mat['self'])]
            d = np.array(mat['defect'])
            y, maps = [], []
            for smp in test:
                g = grid_of(smp.image_path, config)
                maps.append(s.fuse(bank.patch_distances(g), self_map_of(smp.image_path, config) if s.uses_self else None)); y.append(int(smp.label))
            y = np.array(y)
            row = dict(cat=cat, k=len(refs), seed=seed, syn={}, test={})
            for f in FR:
                sm = np.array([image_score(m, f) for m in fused_mat]); row['syn'][str(f)] = round(_auroc(sm[~d], sm[d]), 4)
                v = np.array([image_score(m, f) for m in maps]); row['test'][str(f)] = round(_auroc(v[y == 0], v[y == 1]), 4)
            print(json.dumps(row), flush=True); out.write(json.dumps(row) + '\n'); out.flush()

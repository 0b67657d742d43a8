"""The held-out good images' score with a window over their score without it (``window_knn.py``).

    PYTHONPATH=src:experiments IAD_LAB_CACHE=/work/coarse/cache python experiments/window_ratio.py cats shots windows
"""
import os, sys, json, numpy as np
sys.path.insert(0, 'experiments')
os.environ['WINDOW'] = '0'
import calib
from iad_agent.vision.normal_bank import image_score
import window_knn as W
cats = sys.argv[1].split(','); shots = sys.argv[2].split(',')
for win in [float(x) for x in sys.argv[3].split(',')]:
    W.WINDOW = win
    for cat, k, seed, refs, test, y in calib.groups(cats, 'elpv' in cats, 100, shots):
        bank = calib.plain_bank(refs, calib.capped_config(refs))
        r = []
        for i in range(len(refs))[:16]:
            g = bank.grids[i].astype(np.float32)
            p = image_score(bank.leave_out_distances(g, [i])[0])
            w = image_score(W.windowed(bank, g, i))
            r.append(w / p)
        print(json.dumps(dict(window=win, cat=cat, shots=str(k), seed=seed, ratio=round(float(np.median(r)), 4))), flush=True)

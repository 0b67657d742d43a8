"""The package's global look on more test images than ``iad eval`` takes: test AUROC, false-alarm and miss rates.

Per k-shot group (1, 4 and all shots; 3 seeds) of the named categories (``elpv``: 100 good + 100
defective cells; others: at most 100 defective test images), the product is registered by the
package on ``PYTHONPATH`` (run it from two checkouts to compare them), and the fused look's scores
are read at its calibrated threshold. One JSON row per group on stdout.

    PYTHONPATH=src:experiments IAD_LAB_CACHE=/work/coarse/cache python experiments/look_check.py elpv,magnetic_tile > OUT.jsonl
"""
import sys, dataclasses, json, numpy as np
sys.path.insert(0,'experiments')
import calib
from iad_agent.eval.runner import set_threads
from iad_agent.vision.normal_bank import image_score
from iad_agent.vision.scoring import _auroc
set_threads(1)
cats = sys.argv[1].split(',')
for cat,k,seed,refs,test,y in calib.groups(cats, True, 100, ['1','4','all']):
    c3=calib.package_config(refs)
    mat={}
    bank,cal=calib.learned_bank(refs,c3,material=mat)
    s=bank.scoring
    raw=getattr(s,'self_raw',False)
    maps=[s.fuse(bank.patch_distances(calib.grid_of(t.image_path,c3)), calib.self_map_of(t.image_path, c3, raw) if s.uses_self else None) for t in test]
    v=np.array([image_score(m) for m in maps])
    far=float((v[y==0]>=cal.threshold).mean()); miss=float((v[y==1]<cal.threshold).mean())
    print(json.dumps(dict(cat=cat,shots=str(k),seed=seed,w=s.self_weight,raw=raw,auroc=round(_auroc(v[y==0],v[y==1]),4),far=round(far,3),miss=round(miss,3))),flush=True)

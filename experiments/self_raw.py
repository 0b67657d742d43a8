"""Self-similarity on the unsmoothed patch grid, the nearest-neighbour search on the smoothed one.

Per k-shot group (6 dev categories + ELPV, 1 and 4 shots, 3 seeds, at most 60 defective test images),
the product is registered as the package did before the change (``vision.learn.learn``: weight and
levels on the 3×3-smoothed grid); the fused look's test image AUROC is then computed with the self
term read on the smoothed grid (``t3``, today) and on the unsmoothed one (``t1``, its level the
references' median), for the chosen weight (``pkg3`` / ``pkg1``) and each fixed weight.

    PYTHONPATH=src:experiments IAD_LAB_CACHE=/work/coarse/cache python experiments/self_raw.py /work/variants/selfraw.jsonl
"""
import sys, dataclasses, json, numpy as np
sys.path.insert(0,'experiments')
import calib
from iad_agent.eval.runner import set_threads
from iad_agent.vision.normal_bank import image_score
from iad_agent.vision.scoring import _auroc
set_threads(1)
calib.smoothed_self()  # its figures in experiments/README.md predate learn.SELF_RAW
out=open(sys.argv[1],'a')
for cat,k,seed,refs,test,y in calib.groups(None, True, 60, ['1','4']):
    c3=calib.package_config(refs); c1=dataclasses.replace(c3, smooth=1)
    mat={}
    bank,cal=calib.learned_bank(refs,c3,material=mat)
    s=bank.scoring
    sl1=float(np.median([image_score(calib.self_map_of(p,c1)) for p in refs]))
    knn=[bank.patch_distances(calib.grid_of(t.image_path,c3)) for t in test]
    s3=[calib.self_map_of(t.image_path,c3) for t in test]
    s1=[calib.self_map_of(t.image_path,c1) for t in test]
    row=dict(cat=cat,shots=str(k),seed=seed,w=s.self_weight,t3={},t1={})
    for w in (0.25,0.5,0.75,1.0, s.self_weight):
        a=np.array([image_score((1-w)*kk/s.knn_level + w*m/s.self_level) for kk,m in zip(knn,s3)])
        b=np.array([image_score((1-w)*kk/s.knn_level + w*m/sl1) for kk,m in zip(knn,s1)])
        row['t3'][str(w)]=round(_auroc(a[y==0],a[y==1]),4); row['t1'][str(w)]=round(_auroc(b[y==0],b[y==1]),4)
    row['pkg3']=row['t3'][str(s.self_weight)] if str(s.self_weight) in row['t3'] else None
    row['pkg1']=row['t1'][str(s.self_weight)] if str(s.self_weight) in row['t1'] else None
    print(json.dumps(row),flush=True); out.write(json.dumps(row)+'\n'); out.flush()

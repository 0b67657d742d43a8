"""Is the nearest-neighbour level steadier when each held-out good image also leaves out its nearest reference?

At 4 shots, per group (6 dev categories + ELPV, 3 seeds): the median test good image's plain knn score
over the references' median leave-one-out score (LOO), and over their median "leave-nearest-out" score
(LNO: the image and the other reference it matches best are both left out).

    PYTHONPATH=src:experiments IAD_LAB_CACHE=/work/coarse/cache python experiments/leave_nearest_out.py grid,magnetic_tile,juice_bottle,elpv,transistor,hazelnut,bottle
"""
import sys, numpy as np
sys.path.insert(0,'experiments')
import calib
from iad_agent.eval.runner import set_threads
from iad_agent.vision.normal_bank import image_score
set_threads(1)
for cat,k,seed,refs,test,y in calib.groups(sys.argv[1].split(','), True, 30, ['4']):
    config=calib.package_config(refs)
    bank=calib.plain_bank(refs,config)
    n=len(refs)
    loo=[];lno=[]
    for i in range(n):
        g=bank.grids[i].astype(np.float32)
        others=[j for j in range(n) if j!=i]
        sets=[[i]]+[[i]+[o for o in others if o!=j] for j in others]
        maps=bank.leave_out_distances(g,sets)
        s=[image_score(m) for m in maps]
        loo.append(s[0]); jn=others[int(np.argmin(s[1:]))]
        lno.append(image_score(bank.leave_out_distances(g,[[i,jn]])[0]))
    good=[smp for smp in test if not smp.label][:30]
    kg=np.median([image_score(bank.patch_distances(calib.grid_of(smp.image_path,config))) for smp in good])
    print(cat,seed,'test/LOO %.2f test/LNO %.2f'%(kg/np.median(loo), kg/np.median(lno)),flush=True)

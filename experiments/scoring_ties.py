"""The scoring's self-similarity weight: what registration chooses vs the test AUROC of every weight.

    PYTHONPATH=src python experiments/scoring_ties.py dump 1,4 "" /work/wdiag/rows.jsonl   # ~6 min, cached grids
    PYTHONPATH=src python experiments/scoring_ties.py rules /work/wdiag/rows.jsonl

``dump``: for each k-shot group of the ``iad eval`` protocol (6 dev categories + ELPV, seeds 0-2)
registers with ``vision.learn.learn`` and records the synthetic AUROC of every candidate weight
(what the choice sees) and the test AUROC of the global look at every weight (test labels read
for the diagnosis only). ``rules``: the test AUROC each tie-breaking rule would get. Grids come
from ``experiments/calib.py``'s cache.
"""
import sys, json, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).parent))
import numpy as np
import calib
from calib import grid_of, self_map_of, product_config, extractor, categories
from iad_agent.imageio import load_image
from iad_agent.vision.normal_bank import NormalBank, image_score
from iad_agent.vision.learn import learn
from iad_agent.vision.scoring import WEIGHTS, Scoring, _auroc
from iad_agent.eval.plan import draw_references, parse_shots
from iad_agent.eval.runner import set_threads
set_threads(1)
import os, dataclasses
_pc = calib.product_config
OVR = json.loads(os.environ.get('DIAG_CFG', '{}'))  # e.g. '{"backbone": "efficientnet-lite1"}'
product_config = lambda refs: dataclasses.replace(_pc(refs), **OVR)  # noqa: E731
RULES = r'''
import json, sys, numpy as np
from collections import defaultdict
rows=[json.loads(l) for l in open(sys.argv[1]) if l.startswith('{')]
W=['0.0','0.25','0.5','0.75','1.0']
def current(syn,k):
    best_w,best='0.0',-1
    for w in W:
        if syn[w] > best + (0.02 if float(w)>0 else 0): best_w,best=w,syn[w]
    return best_w
def larger(tol):
    def f(syn,k):
        m=max(syn.values()); return [w for w in W if syn[w]>=m-tol][-1]
    return f
def larger1(tol):
    def f(syn,k): return larger(tol)(syn,k) if k==1 else current(syn,k)
    return f
def fixed(w): return lambda syn,k: w
rules={'current':current,'larger0':larger(0.0),'larger.01':larger(0.01),'larger.02':larger(0.02),'larger.02@1shot':larger1(0.02),'larger.05@1':larger1(0.05),'w=0.5':fixed('0.5'),'oracle':None}
for k in (1,4):
    print('shots',k)
    for name,r in rules.items():
        per=defaultdict(list)
        for x in rows:
            if x['k']!=k and not (k==4 and x['n']==4): continue
            if x['n']!=k: continue
            w = max(x['test'],key=x['test'].get) if r is None else r(x['syn'],k)
            per[x['cat']].append(x['test'][w])
        dev=[np.mean(v) for c,v in per.items() if c!='elpv']
        print('  %-16s dev %.3f elpv %.3f | '%(name,np.mean(dev),np.mean(per.get('elpv',[np.nan]))+0)+' '.join('%s %.3f'%(c[:6],np.mean(v)) for c,v in per.items()))
'''
if sys.argv[1] == 'rules':
    sys.argv = sys.argv[1:]
    exec(compile(RULES, 'rules', 'exec'))
    sys.exit()
sys.argv = sys.argv[1:]
shots = parse_shots(sys.argv[1].split(',')) if len(sys.argv) > 1 else parse_shots(['1', '4'])
cats = sys.argv[2].split(',') if len(sys.argv) > 2 and sys.argv[2] else None
out = open(sys.argv[3] if len(sys.argv) > 3 else '/work/wdiag/rows.jsonl', 'a')
for cat, pool, test in categories(cats, True, 60):
    for k in shots:
        for seed in range(3):
            refs = draw_references(pool, k, seed, cat)
            config = product_config(refs)
            bank = NormalBank(config)
            bank.add([grid_of(p, config) for p in refs], [str(p) for p in refs])
            imgs = {}
            def image_of(i):
                if i not in imgs: imgs[i] = load_image(refs[i])
                return imgs[i]
            t = time.time()
            mat = {}
            bank.scoring, cal = learn(bank, extractor(config), image_of, 0.05, material=mat)
            s = bank.scoring
            y, kn, se = [], [], []
            for smp in test:
                g = grid_of(smp.image_path, config)
                kn.append(bank.patch_distances(g)); se.append(self_map_of(smp.image_path, config)); y.append(int(smp.label))
            y = np.array(y)
            res = {}
            for w in WEIGHTS:
                sc = Scoring(w, s.knn_level, s.self_level)
                v = np.array([image_score(sc.fuse(a, b)) for a, b in zip(kn, se)])
                res[str(w)] = round(_auroc(v[y == 0], v[y == 1]), 4)
            row = dict(cat=cat, k=k, seed=seed, w=s.self_weight, syn=s.synthetic_auroc, test=res, n=len(refs))
            print(json.dumps(row), flush=True); out.write(json.dumps(row) + '\n'); out.flush()

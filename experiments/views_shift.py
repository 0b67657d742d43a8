"""One good image: how far above the augmented views other good parts score, and what a view-shift threshold rule would give.

    PYTHONPATH=src IAD_LAB_CACHE=/work/detect3-results/cache python experiments/calib.py --shots 1 --max-bad 60 --out /work/calib1/dump.jsonl
    python experiments/views_shift.py /work/calib1/dump.jsonl

The shift and spread are measured on the pool (good images that are not references); test labels
only judge the rules.
"""
import json, numpy as np, sys
from statistics import NormalDist
rows=[json.loads(l) for l in open(sys.argv[1])]
z=NormalDist().inv_cdf(0.95)
def thr(s):
    s=np.asarray(s); std=max(s.std(ddof=1),0.05*s.mean()); return s.mean()+z*std
# pool factor: median pool / median views (log)
fac={}
for r in rows:
    fac.setdefault(r['cat'],[]).append(np.log(np.median(r['pool'])/np.median(r['held'])))
for c,v in fac.items(): print('%-14s pool/views factor %s'%(c, ' '.join('%.2f'%np.exp(x) for x in v)))
dev=[c for c in fac if c!='elpv']
shift=np.median([np.mean(fac[c]) for c in dev]); print('median dev log shift %.3f (x%.2f)'%(shift,np.exp(shift)))
def judge(mult, sig=None):
    out={}
    for r in rows:
        h=np.asarray(r['held'])
        if sig is None: t=thr(h)*mult
        else: t=np.exp(np.log(np.median(h))+np.log(mult)+z*sig)
        y=np.asarray(r['test_y']); s=np.asarray(r['test'])
        far=(s[y==0]>=t).mean(); miss=(s[y==1]<t).mean()
        out.setdefault(r['cat'],[]).append((far,miss,1-(far+miss)/2))
    return {c:np.mean(v,axis=0) for c,v in out.items()}
for name,mult,sig in [('now',1.0,None),('x%.2f'%np.exp(shift),np.exp(shift),None),('x1.1',1.1,None),('x1.2',1.2,None)]:
    j=judge(mult,sig); d=np.mean([j[c] for c in dev],axis=0)
    print('%-8s dev FAR %.2f miss %.2f bal %.3f | elpv %.2f %.2f %.3f | '%(name,*d,*j['elpv'])+' '.join('%s %.2f/%.2f'%(c[:5],j[c][0],j[c][1]) for c in dev))
# spread of real good parts (pool) in log units around their own median, per group; median over dev categories
sig={}
for r in rows:
    l=np.log(np.asarray(r['pool'])); sig.setdefault(r['cat'],[]).append(np.std(l - np.median(l),ddof=1))
print('pool log sigma', {c:round(float(np.mean(v)),3) for c,v in sig.items()})
s_med=np.median([np.mean(sig[c]) for c in dev]); print('median dev sigma %.3f'%s_med)
# the fraction of pool goods above the rule's threshold (pool FAR; the rule's promise on good parts)
for name,mult,sg in [('med*f*exp(z s)',np.exp(shift),s_med)]:
    j=judge(mult,sg); d=np.mean([j[c] for c in dev],axis=0)
    print('%-8s dev FAR %.2f miss %.2f bal %.3f | elpv %.2f %.2f %.3f | '%(name,*d,*j['elpv'])+' '.join('%s %.2f/%.2f'%(c[:5],j[c][0],j[c][1]) for c in dev))
# the adopted rule: the shift capped at the synthetic defects' median (needs calib.py's syn_scores)
if all('syn_scores' in r for r in rows):
    def judge_rule(rule):
        out = {}
        for r in rows:
            t = rule(r); y = np.asarray(r['test_y']); s = np.asarray(r['test'])
            far = (s[y == 0] >= t).mean(); miss = (s[y == 1] < t).mean()
            out.setdefault(r['cat'], []).append((far, miss, 1 - (far + miss) / 2))
        return {c: np.mean(v, axis=0) for c, v in out.items()}
    for name, q in (('cap: synthetic median', 0.5), ('cap: synthetic lower quartile', 0.25)):
        j = judge_rule(lambda r: min(thr(r['held']) * np.exp(shift), max(thr(r['held']), np.quantile(r['syn_scores'], q))))
        d = np.mean([j[c] for c in dev], axis=0)
        print('%-30s dev FAR %.2f miss %.2f bal %.3f | elpv %.2f %.2f %.3f' % (name, *d, *j['elpv']))

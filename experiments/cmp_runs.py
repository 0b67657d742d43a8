"""python cmp.py DIR[:policy,...] ... -> per shots: mean over categories (seed-averaged) of AUROC / bal acc / FAR / miss."""
import json, sys, collections
import numpy as np
keys = ['image_auroc', 'balanced_accuracy', 'false_alarm_rate', 'miss_rate', 'pixel_auroc', 'tool_calls_per_image']
for arg in sys.argv[1:]:
    d, _, pol = arg.partition(':')
    pols = pol.split(',') if pol else None
    recs = [json.loads(l) for l in open(d + '/records.jsonl')]
    by = collections.defaultdict(lambda: collections.defaultdict(list))
    for r in recs:
        if pols and r['policy'] not in pols: continue
        if r.get('image_auroc') is None: continue
        by[(str(r['shots']), r['policy'])][r['category']].append(r)
    for (shots, p), cats in sorted(by.items()):
        row = []
        for k in keys:
            vals = [np.mean([x[k] for x in rs if x.get(k) is not None]) for rs in cats.values() if any(x.get(k) is not None for x in rs)]
            row.append(f"{k[:8]} {np.mean(vals):.3f}")
        per = ' '.join(f"{c[:6]}={np.mean([x['image_auroc'] for x in rs]):.3f}/{np.mean([x['balanced_accuracy'] for x in rs]):.3f}" for c, rs in sorted(cats.items()))
        print(f"{d[-18:]:18s} {shots:>4s} {p:22s} " + ' | '.join(row))
        print('     ', per)

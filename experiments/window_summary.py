import json, sys, collections, numpy as np
for f in sys.argv[1:]:
    rows = [json.loads(l) for l in open(f)]
    by = collections.defaultdict(list)
    for r in rows: by[(r['shots'], r['cat'])].append(r)
    out = collections.defaultdict(dict)
    for (s, c), rs in sorted(by.items()):
        a = np.mean([r['auroc'] for r in rs]); b = np.mean([1 - (r['far'] + r['miss']) / 2 for r in rs])
        out[s][c] = (a, b, len(rs))
    for s, d in out.items():
        dev = [v for c, v in d.items() if c != 'elpv']
        line = ' '.join(f"{c[:6]}={v[0]:.3f}/{v[1]:.3f}({v[2]})" for c, v in sorted(d.items()))
        print(f"{f.split('/')[-1]:10s} {s:>3s} dev {np.mean([v[0] for v in dev]):.3f}/{np.mean([v[1] for v in dev]):.3f} n={len(dev)} | {line}")

"""Per-category / per-shots summary of an (even unfinished) iad eval records.jsonl.

    python experiments/summarize.py /work/research-results/full/records.jsonl
"""
import json
import sys
from collections import defaultdict

import numpy as np

rows = [json.loads(line) for line in open(sys.argv[1])]
keys = ["image_auroc", "balanced_accuracy", "f1", "false_alarm_rate", "miss_rate", "pixel_auroc", "box_hit_rate", "ms_per_image_p50", "cpu_ms_per_image_p50", "peak_rss_mb"]
groups = defaultdict(list)
for r in rows:
    groups[(r["category"], str(r["shots"]), r["policy"])].append(r)
print("| category | shots | policy | n seeds | " + " | ".join(keys) + " |")
print("|" + "---|" * (len(keys) + 4))
for (cat, shots, pol), rs in sorted(groups.items()):
    vals = []
    for k in keys:
        v = [r[k] for r in rs if r.get(k) is not None]
        vals.append(f"{np.mean(v):.3f}" if v else "n/a")
    print(f"| {cat} | {shots} | {pol} | {len(rs)} | " + " | ".join(vals) + " |")
# means over categories with both classes
print()
print("| shots | policy | categories | " + " | ".join(keys) + " |")
print("|" + "---|" * (len(keys) + 3))
bypol = defaultdict(lambda: defaultdict(list))
for (cat, shots, pol), rs in groups.items():
    if rs[0]["n_normal"] and rs[0]["n_anomalous"]:
        for k in keys:
            v = [r[k] for r in rs if r.get(k) is not None]
            if v:
                bypol[(shots, pol)][k].append(np.mean(v))
        bypol[(shots, pol)]["_cats"].append(cat)
for (shots, pol), d in sorted(bypol.items()):
    print(f"| {shots} | {pol} | {len(d['_cats'])} | " + " | ".join(f"{np.mean(d[k]):.3f}" if d[k] else "n/a" for k in keys) + " |")

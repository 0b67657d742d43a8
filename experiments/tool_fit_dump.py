"""Dump each group's tool-weight fit (the items the fit reads) for offline selection rules (scratch).

    PYTHONPATH=src:experiments OMP_NUM_THREADS=1 python experiments/tool_fit_dump.py cats shots > OUT.jsonl

For every ``iad eval`` group of the shared data (``cats``; ``elpv`` adds the ELPV cells), the
product is registered as the package does and the items ``vision.tool_weights.choose_weights``
saw are written: each held-out good image's and synthetic defect's global ratio and tool
evidence, with the band and the chosen pair.
"""
import json, sys
sys.path.insert(0, 'experiments')
import calib
from iad_agent.eval.runner import set_threads
from iad_agent.product import Product
from iad_agent.vision import tool_weights as tw

set_threads(1)
seen = {}
_choose = tw.choose_weights


def recording(items, band_low, band_high, *a, **k):
    out = _choose(items, band_low, band_high, *a, **k)
    seen.update(items=[[int(i.defect), i.ratio, i.zoom, i.compare] for i in items], band=[band_low, band_high],
                chosen=list(out[:2]), aurocs=out[2])
    return out


tw.choose_weights = recording
if __name__ == '__main__':
    cats = sys.argv[1].split(',')
    shots = sys.argv[2].split(',')
    for cat, k, seed, refs, test, y in calib.groups(cats, 'elpv' in cats, 100, shots):
        seen.clear()
        product = Product.build(cat, refs, allow_mixed_sizes=True)
        print(json.dumps(dict(cat=cat, shots=str(k), seed=seed, w=[product.gate.w_zoom, product.gate.w_compare], **seen)), flush=True)

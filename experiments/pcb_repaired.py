"""DeepPCB with normal test images: each tested board with its defects repaired from its template (scratch).

    PYTHONPATH=src:experiments OMP_NUM_THREADS=2 python experiments/pcb_repaired.py [N] > OUT.jsonl

DeepPCB has no defect-free test image, so ``iad eval`` reports only its miss rate there, and a
policy that flags everything would look perfect. Here each tested image also gives a *normal* one:
its defect boxes (grown by 3 px) are replaced by the same pixels of its template — the boards are
aligned and binarised, so everything outside the boxes stays the real capture of a good board. Each
pair is registered as ``iad eval`` does (the template as the one good image) and both images are
inspected by ``knn`` and ``embedded``: one JSON line per pair with the score / threshold of each;
the summary line at the end gives AUROC, false-alarm rate and miss rate. ``FLOOR_ONE=1``: see
``floor_one.py``.
"""
import json, os, sys, tempfile
from pathlib import Path
import numpy as np
from PIL import Image
from iad_agent.api import make_inspector
from iad_agent.datasets import load_dataset
from iad_agent.eval.plan import default_root, split_dataset
from iad_agent.eval.runner import set_threads
from iad_agent.product import Product
from iad_agent.vision.scoring import _auroc

import floor_one  # noqa: F401 - FLOOR_ONE=1: the self weight may be 0 with one good image

set_threads(int(os.environ.get('THREADS', '2')))
GROW = 3


def repaired(sample, out: Path) -> Path:
    test = np.array(Image.open(sample.image_path).convert('L'))
    temp = np.array(Image.open(sample.references[0]).convert('L'))
    h, w = test.shape
    for b in sample.boxes:
        x0, y0, x1, y1 = b.to_list()
        xa, ya = max(0, int(x0 * w) - GROW), max(0, int(y0 * h) - GROW)
        xb, yb = min(w, int(np.ceil(x1 * w)) + GROW), min(h, int(np.ceil(y1 * h)) + GROW)
        test[ya:yb, xa:xb] = temp[ya:yb, xa:xb]
    path = out / (Path(sample.image_path).stem + '_repaired.png')
    Image.fromarray(test).save(path)
    return path


if __name__ == '__main__':
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 71
    split = split_dataset(load_dataset('deeppcb', default_root('deeppcb')))
    samples = split.test[:: max(1, len(split.test) // n)][:n]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for s in samples:
            product = Product.build('pcb', list(s.references), allow_mixed_sizes=True)
            good = repaired(s, Path(tmp))
            row = dict(path=str(s.image_path))
            for policy in ('knn', 'embedded'):
                ins = make_inspector(product, policy)
                for name, img in (('bad', s.image_path), ('good', good)):
                    ans = ins.inspect(img).trajectory.answer
                    row[f'{policy}_{name}'] = round(ans.score / ans.threshold, 4)
            rows.append(row)
            print(json.dumps(row), flush=True)
    summary = {}
    for policy in ('knn', 'embedded'):
        g = np.array([r[f'{policy}_good'] for r in rows]); b = np.array([r[f'{policy}_bad'] for r in rows])
        summary[policy] = dict(auroc=round(_auroc(g, b), 3), far=round(float((g > 1).mean()), 3), miss=round(float((b <= 1).mean()), 3),
                               good_median=round(float(np.median(g)), 3), bad_median=round(float(np.median(b)), 3))
    print(json.dumps(dict(summary=summary, n=len(rows))))

"""Standardised input brightness on the unseen check set ELPV (issue 11): image AUROC on / off.

Registers each (shots, seed) product of the ``iad eval`` draw twice (``FeatureConfig``
``standardize`` on and off; package registration, so the scoring weight is learned as usual)
and reports image AUROC of the embedded look's score and of plain nearest neighbour, and the
balanced accuracy at the calibrated threshold, on ELPV test cells (``lab.py: elpv_category``).

    PYTHONPATH=src:experiments python experiments/stdcheck.py --shots 1 4 --seeds 3 --n 30
"""

from __future__ import annotations

import argparse

import numpy as np


def main() -> None:
    from sklearn.metrics import roc_auc_score

    from iad_agent.eval.plan import draw_references
    from iad_agent.inspector import Inspector
    from iad_agent.policies import resolve_policy
    from iad_agent.product import Product
    from iad_agent.vision.features import FeatureConfig
    from lab import elpv_category

    ap = argparse.ArgumentParser()
    ap.add_argument("--shots", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--n", type=int, default=30, help="good and defective test cells each")
    a = ap.parse_args()
    cat = elpv_category(n_good=a.n, n_bad=a.n)
    y = np.array([int(s.is_anomalous) for s in cat.test])
    for shots in a.shots:
        res = {True: [], False: []}
        for seed in range(a.seeds):
            refs = draw_references(cat.pool, shots, seed, "elpv")
            for on in (False, True):
                product = Product.build("elpv", refs, FeatureConfig(standardize=on), fpr=0.05, allow_mixed_sizes=True)
                insp = Inspector(product, resolve_policy("knn").policy, {})
                looks = [insp.prepare(s.image_path).look for s in cat.test]
                f = np.array([lk.score for lk in looks])
                k = np.array([lk.plain.score for lk in looks])
                flag = f > np.array([lk.threshold for lk in looks])
                bal = 0.5 * (flag[y == 1].mean() + (~flag[y == 0]).mean())
                res[on].append((roc_auc_score(y, f), roc_auc_score(y, k), bal))
                print(f"elpv shots {shots} seed {seed} standardize {on}: fused {res[on][-1][0]:.3f} knn {res[on][-1][1]:.3f} "
                      f"bal.acc(look) {bal:.3f} w={product.bank.scoring.self_weight}", flush=True)
        for on in (False, True):
            m = np.mean(res[on], axis=0)
            print(f"elpv shots {shots} standardize {on}: mean fused AUROC {m[0]:.3f} knn AUROC {m[1]:.3f} bal.acc {m[2]:.3f}")


if __name__ == "__main__":
    main()

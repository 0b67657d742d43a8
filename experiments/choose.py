"""Per-product automatic choice of the self-similarity weight from synthetic defects, and the
false-alarm rate actually obtained at the threshold set from the references.

    python experiments/choose.py --mode aspect --side 256 --out /work/research-results/choose.jsonl

For each k-shot group: held-out good scores (leave-one-out with k >= 2, augmented views of the
one reference with k = 1), synthetic defects made from the references (scored the same way),
fused map f = (1-w) knn/ck + w self/cs for w in W; w* = best synthetic AUROC. Reports test
AUROC at w* (and at w = 0: plain knn), and FAR / miss / balanced accuracy at the threshold.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import lab  # noqa: E402

from iad_agent.imageio import load_image  # noqa: E402
from iad_agent.product import augmented_views  # noqa: E402
from iad_agent.vision.normal_bank import greedy_coreset, threshold_for_fpr  # noqa: E402
from iad_agent.vision.synthetic import synthetic_defects  # noqa: E402

W = [0.0, 0.25, 0.5, 0.75, 1.0]


def index_of(grids):
    c = grids[0].shape[-1]
    bank = np.concatenate([g.reshape(-1, c) for g in grids])
    if bank.shape[0] > 16384:
        bank = bank[greedy_coreset(bank, 16384)]
    ix = faiss.IndexFlatL2(c)
    ix.add(np.ascontiguousarray(bank, np.float32))
    return ix


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="aspect")
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--ref", type=int, default=0)
    ap.add_argument("--cats", default="")
    ap.add_argument("--elpv", action="store_true")
    ap.add_argument("--shots", default="1,4,all")
    ap.add_argument("--n-syn", type=int, default=16)
    ap.add_argument("--fpr", type=float, default=0.05)
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    cfg = lab.Cfg(mode=a.mode, side=a.side, ref=a.ref)
    shots = [s if s == "all" else int(s) for s in a.shots.split(",")]
    out = open(a.out, "a") if a.out else None
    for cat in lab.categories(a.elpv, a.cats.split(",") if a.cats else None):
        tg = [lab.grid(s.image_path, cfg) for s in cat.test]
        y = np.array([s.label for s in cat.test])
        t_self = [lab.self_map(g) for g in tg]
        for k, seed, refs in lab.groups(cat, shots):
            rg = [lab.grid(p, cfg) for p in refs]
            full = index_of(rg)
            held_knn, held_self, syn_knn, syn_self = [], [], [], []
            if len(refs) >= 2:
                chosen = refs[:8]
                for i, p in enumerate(chosen):
                    others = index_of([g for j, g in enumerate(rg) if j != i])
                    held_knn.append(lab.knn_map(rg[i], None, others))
                    held_self.append(t := lab.self_map(rg[i]))
                    n_each = max(1, a.n_syn // len(chosen))
                    for img, _, _ in synthetic_defects([load_image(p)], n_each, seed=i):
                        g = lab.forward(img, cfg)
                        syn_knn.append(lab.knn_map(g, None, others))
                        syn_self.append(lab.self_map(g))
            else:
                img0 = load_image(refs[0])
                views = augmented_views(img0)
                for v in views:
                    g = lab.forward(v, cfg)
                    held_knn.append(lab.knn_map(g, None, full))
                    held_self.append(lab.self_map(g))
                for img, _, _ in synthetic_defects(views, a.n_syn, seed=1):
                    g = lab.forward(img, cfg)
                    syn_knn.append(lab.knn_map(g, None, full))
                    syn_self.append(lab.self_map(g))
            ck = float(np.median([lab.top_mean(m) for m in held_knn]))
            cs = float(np.median([lab.top_mean(m) for m in held_self]))
            t_knn = [lab.knn_map(g, None, full) for g in tg]
            row = {"cat": cat.name, "cfg": cfg.key, "shots": k, "seed": seed}
            best, best_w = -1, 0.0
            for w in W:
                fuse = lambda kn, se: (1 - w) * kn / ck + w * se / cs  # noqa: E731
                h = [lab.top_mean(fuse(kn, se)) for kn, se in zip(held_knn, held_self)]
                s = [lab.top_mean(fuse(kn, se)) for kn, se in zip(syn_knn, syn_self)]
                syn_auc = lab.auroc([0] * len(h) + [1] * len(s), h + s)
                test = np.array([lab.top_mean(fuse(kn, se)) for kn, se in zip(t_knn, t_self)])
                thr = threshold_for_fpr(h, a.fpr)
                far = float((test[y == 0] > thr).mean()) if (y == 0).any() else None
                miss = float((test[y == 1] <= thr).mean())
                row[f"w{w}"] = {"syn": syn_auc, "test": lab.auroc(y, test), "far": far, "miss": miss,
                                "bacc": None if far is None else 1 - (far + miss) / 2}
                if syn_auc > best + 1e-9:
                    best, best_w = syn_auc, w
            row["w_star"] = best_w
            row["star"] = row[f"w{best_w}"]
            print(f"{cat.name:13s} k={k!s:3s} s={seed} w*={best_w:.2f} syn={best:.3f} test*={row['star']['test']:.3f} "
                  f"knn={row['w0.0']['test']:.3f} self={row['w1.0']['test']:.3f} | far*={row['star']['far']} miss*={row['star']['miss']:.2f} "
                  f"bacc*={row['star']['bacc']} | knn far={row['w0.0']['far']} miss={row['w0.0']['miss']:.2f}", flush=True)
            if out:
                out.write(json.dumps(row) + "\n")
                out.flush()


if __name__ == "__main__":
    main()

"""Image / pixel AUROC of several patch scorers under the k-shot protocol of ``iad eval``.

    python experiments/sweep.py --mode aspect --side 256 --cats grid,hazelnut --out /work/research-results/x.jsonl

Scorers: knn (nearest good patch), self (k-th nearest patch of the same image outside the
neighbourhood), and fusions of the two normalised by their level on the good references.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import lab  # noqa: E402

from iad_agent.vision.normal_bank import greedy_coreset  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", default="efficientnet-lite0")
    ap.add_argument("--strides", default="8,16")
    ap.add_argument("--mode", default="square")
    ap.add_argument("--side", type=int, default=256)
    ap.add_argument("--max-long", type=int, default=1024)
    ap.add_argument("--ref", type=int, default=0)
    ap.add_argument("--cats", default="")
    ap.add_argument("--elpv", action="store_true")
    ap.add_argument("--shots", default="1,4,all")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--self-k", type=int, default=4)
    ap.add_argument("--self-r", type=int, default=2)
    ap.add_argument("--aug", default="", help="comma list of augmentations added to the bank")
    ap.add_argument("--pixel", action="store_true")
    ap.add_argument("--out", default="")
    a = ap.parse_args()
    cfg = lab.Cfg(a.backbone, tuple(int(s) for s in a.strides.split(",")), a.mode, a.side, a.max_long, 3, a.ref)
    shots = [s if s == "all" else int(s) for s in a.shots.split(",")]
    augs = [x for x in a.aug.split(",") if x]
    cats = lab.categories(a.elpv, a.cats.split(",") if a.cats else None)
    out = open(a.out, "a") if a.out else None
    for cat in cats:
        t0 = time.time()
        tg = [lab.grid(s.image_path, cfg) for s in cat.test]
        t_ext = time.time() - t0
        y = [s.label for s in cat.test]
        selfm = [lab.self_map(g, a.self_k, a.self_r) for g in tg]
        masks = None
        if a.pixel:
            masks = []
            for s in cat.test:
                from iad_agent.imageio import image_size

                w, h = image_size(s.image_path)
                masks.append(s.ground_truth_mask(size=lab.pixel_side(w, h)))
        rows = []
        for k, seed, refs in lab.groups(cat, shots, a.seeds):
            rg = [lab.grid(p, cfg, aug) for p in refs for aug in ["", *augs]]
            bank = np.concatenate([g.reshape(-1, g.shape[-1]) for g in rg])
            if bank.shape[0] > 16384:
                bank = bank[greedy_coreset(bank, 16384)]
            import faiss

            index = faiss.IndexFlatL2(bank.shape[1])
            index.add(np.ascontiguousarray(bank, np.float32))
            knnm = [lab.knn_map(g, None, index) for g in tg]
            # normalisers from the references only
            ref_self = np.median([lab.top_mean(lab.self_map(lab.grid(p, cfg), a.self_k, a.self_r)) for p in refs[:8]])
            if len(refs) >= 2:
                lo = []
                for i, p in enumerate(refs[:8]):
                    others = np.concatenate([lab.grid(q, cfg, aug).reshape(-1, bank.shape[1]) for j, q in enumerate(refs) if j != i for aug in ["", *augs]])
                    lo.append(lab.top_mean(lab.knn_map(lab.grid(p, cfg), others)))
                ref_knn = float(np.median(lo))
            else:
                ref_knn = float(np.median([lab.top_mean(lab.knn_map(lab.grid(refs[0], cfg, aug), None, index)) for aug in ["rot3", "shift2"]]))
            maps = {"knn": knnm, "self": selfm,
                    "min": [np.minimum(kn / ref_knn, se / ref_self) for kn, se in zip(knnm, selfm)],
                    "gmean": [np.sqrt(kn / ref_knn * se / ref_self) for kn, se in zip(knnm, selfm)],
                    "mean": [kn / ref_knn + se / ref_self for kn, se in zip(knnm, selfm)]}
            row = {"cat": cat.name, "cfg": cfg.key, "shots": k, "seed": seed, "aug": a.aug}
            for name, ms in maps.items():
                row[f"img_{name}"] = lab.auroc(y, [lab.top_mean(m) for m in ms])
                if masks is not None:
                    ok = [i for i, m in enumerate(masks) if m is not None]
                    if ok:
                        from iad_agent.eval.metrics import pixel_auroc

                        pm = [lab.resize_map(ms[i], masks[i].shape[::-1]) for i in ok]
                        row[f"pix_{name}"] = pixel_auroc([masks[i] for i in ok], pm)
            rows.append(row)
            if out:
                out.write(json.dumps(row) + "\n")
                out.flush()
        # summary per shots
        for k in shots:
            rr = [r for r in rows if str(r["shots"]) == str(k)]
            if not rr:
                continue
            msg = " ".join(f"{n}={np.mean([r[f'img_{n}'] for r in rr if r[f'img_{n}'] is not None]):.3f}" for n in ["knn", "self", "min", "gmean", "mean"])
            if a.pixel and f"pix_knn" in rr[0]:
                msg += " | pix " + " ".join(f"{n}={np.mean([r[f'pix_{n}'] for r in rr if r.get(f'pix_{n}') is not None]):.3f}" for n in ["knn", "self", "min", "gmean"])
            print(f"{cat.name:14s} {cfg.key} {a.aug or '-':10s} k={k!s:3s} {msg}  (extract {t_ext:.0f}s, total {time.time() - t0:.0f}s)", flush=True)


if __name__ == "__main__":
    main()

"""Heat-map level per image (issue 11 item 7): pooled pixel AUROC of the look's patch map under
post-processing variants. Caches each group's patch maps, masks and labels (package code:
registration, prepare), then re-scores offline. Diagnosis on test masks; a variant is kept only
if it is a rule without a per-product setting and it holds across categories.

    python experiments/mapnorm.py collect --shots 1 4 --seeds 0 1 2 --out /work/mapnorm
    python experiments/mapnorm.py score --out /work/mapnorm
    SELF_CROSS=1 python experiments/mapnorm.py collect --out /work/mapcross     # the self term without its rows/columns
    python experiments/mapnorm.py images --out /work/mapnorm --vs /work/mapcross  # the looks' image AUROC / balanced acc.
"""
from __future__ import annotations

import argparse
import functools
import pickle
from pathlib import Path

import numpy as np

CATS = [("mvtec", "grid"), ("mvtec", "hazelnut"), ("mvtec", "transistor"), ("loco", "juice_bottle"),
        ("magnetic_tile", "magnetic_tile")]


def cross_neighbourhoods(h, w, radius):
    """Variant: leave out the patch's own rows and columns (within ``radius``), not only its square."""
    return _cross(h, w, radius)


@functools.lru_cache(maxsize=16)
def _cross(h, w, radius):
    yy, xx = np.divmod(np.arange(h * w), w)
    offsets = np.arange(-radius, radius + 1)
    ry = np.clip(yy[:, None] + offsets[None], 0, h - 1)  # (n, 2r+1) rows
    cx = np.clip(xx[:, None] + offsets[None], 0, w - 1)
    rows = (ry[:, :, None] * w + np.arange(w)[None, None]).reshape(h * w, -1)
    cols = (np.arange(h)[None, :, None] * w + cx[:, None, :]).reshape(h * w, -1)
    out = np.concatenate([rows, cols], 1).astype(np.int64)
    out.flags.writeable = False
    return out


def collect(dataset, category, shots, seed, max_test, out: Path):
    import os
    if os.environ.get("SELF_CROSS"):
        from iad_agent.vision import similarity
        similarity._neighbourhoods = cross_neighbourhoods
    f = out / f"{dataset}_{category}_{shots}_{seed}.pkl"
    if f.exists():
        return
    from borderlab import prepared_tests

    product, tests = prepared_tests(dataset, category, shots, seed, max_test)
    rows = []
    for s, p, size, gt in tests:
        ok = gt is not None and (s.mask_path is not None or not s.is_anomalous)
        rows.append(dict(label=int(s.is_anomalous), type=s.defect_type, gt=gt, ok=ok, size=size,
                         fused=np.asarray(p.look.patch_map, np.float32),
                         knn=np.asarray(p.look.plain.patch_map, np.float32) if p.look.knn is not None else None,
                         score=float(p.look.score), threshold=float(p.look.threshold)))
    out.mkdir(parents=True, exist_ok=True)
    f.write_bytes(pickle.dumps(dict(rows=rows, patch_threshold=float(product.bank.calibration.patch_threshold))))
    print("done", f, flush=True)


def upsample(pm, size):
    from PIL import Image
    return np.asarray(Image.fromarray(pm.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR))


VARIANTS = {
    "asis": lambda m: m,
    "minus_median": lambda m: m - np.median(m),
    "minus_q25": lambda m: m - np.quantile(m, 0.25),
    "minus_q10": lambda m: m - np.quantile(m, 0.10),
    "minus_min": lambda m: m - m.min(),
}


def score(out: Path):
    from iad_agent.eval import metrics
    res = {}
    for f in sorted(out.glob("*.pkl")):
        d = pickle.loads(f.read_bytes())
        cat, shots = "_".join(f.stem.split("_")[:-2]), f.stem.split("_")[-2]
        rows = [r for r in d["rows"] if r["ok"]]
        masks = [r["gt"] for r in rows]
        for name, fn in VARIANTS.items():
            maps = [upsample(fn(r["fused"]), r["size"]) for r in rows]
            pa = metrics.pixel_auroc(masks, maps)
            ap = metrics.aupro(masks, maps, fpr_limit=0.3)
            res.setdefault((cat, shots, name), []).append((pa, ap))
    cats = sorted({k[0] for k in res})
    for shots in sorted({k[1] for k in res}):
        print(f"\n## shots {shots}: pixel AUROC / AUPRO")
        print("| variant | " + " | ".join(c.split("_", 1)[1] for c in cats) + " | mean |")
        for name in VARIANTS:
            vals = [np.mean(res[(c, shots, name)], axis=0) for c in cats if (c, shots, name) in res]
            cells = [f"{v[0]:.3f} / {v[1]:.3f}" for v in vals]
            m = np.mean(vals, axis=0)
            print(f"| {name} | " + " | ".join(cells) + f" | {m[0]:.3f} / {m[1]:.3f} |")


def images(dirs: list[Path]):
    """Image AUROC / balanced accuracy / false-alarm rate / miss rate of the cached looks, per category."""
    from sklearn.metrics import roc_auc_score

    def stats(f):
        r = pickle.loads(f.read_bytes())["rows"]
        y, s, t = [x["label"] for x in r], [x["score"] for x in r], r[0]["threshold"]
        g = np.array([x["score"] for x in r if x["label"] == 0])
        a = np.array([x["score"] for x in r if x["label"] == 1])
        far, miss = np.mean(g > t), np.mean(a <= t)
        return roc_auc_score(y, s), 1 - (far + miss) / 2, far, miss

    for shots in ("1", "4"):
        print(f"shots {shots}: image AUROC / balanced acc. / FAR / miss of the look, seeds averaged; columns: {[str(d) for d in dirs]}")
        cats = sorted({f.stem.rsplit("_", 2)[0] for f in dirs[0].glob("*.pkl")})
        means: dict = {d: [] for d in dirs}
        for c in cats:
            line = c.ljust(30)
            for d in dirs:
                fs = sorted(d.glob(f"{c}_{shots}_*.pkl"))
                if not fs:
                    line += " | -"
                    continue
                v = np.mean([stats(f) for f in fs], 0)
                means[d].append(v)
                line += " | " + " ".join(f"{x:.3f}" for x in v)
            print(line)
        print("MEAN".ljust(30) + "".join(" | " + " ".join(f"{x:.3f}" for x in np.mean(means[d], 0)) for d in dirs if means[d]))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd")
    ap.add_argument("--shots", nargs="+", default=["1", "4"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--max-test", type=int, default=150)
    ap.add_argument("--out", type=Path, default=Path("/work/mapnorm"))
    ap.add_argument("--cats", nargs="*", default=None)
    ap.add_argument("--vs", type=Path, nargs="*", default=[])
    a = ap.parse_args()
    if a.cmd == "collect":
        for ds, cat in CATS:
            if a.cats and cat not in a.cats:
                continue
            for shots in a.shots:
                for seed in a.seeds:
                    collect(ds, cat, shots, seed, a.max_test, a.out)
    elif a.cmd == "images":
        images([a.out, *a.vs])
    else:
        score(a.out)

"""A per-product head on the frozen features, SimpleNet-style (issue 11 item 3b; scratch).

For each k-shot group, a linear adaptor + a small MLP discriminator are trained on the references'
patch features (normal) against the same features plus Gaussian noise (SimpleNet's synthetic
anomalous features), on 2 CPU cores in seconds. The image score is the mean of the top 1 % patch
scores (−discriminator logit). Test image AUROC of the head alone, plain knn, and knn × head
(each divided by its median on the references' own patches). Cached 256-px grids, package config.

    PYTHONPATH=src python experiments/simplenet.py --shots 1,4 [--cats grid,...]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import calib  # noqa: E402


def train_head(normal: np.ndarray, steps: int = 300, noise: float = 0.15, seed: int = 0):  # noqa: ANN201
    import torch

    torch.manual_seed(seed)
    x = torch.from_numpy(normal.astype(np.float32))
    mu, sd = x.mean(0), x.std(0) + 1e-6
    x = (x - mu) / sd
    c = x.shape[1]
    adaptor = torch.nn.Linear(c, c)
    disc = torch.nn.Sequential(torch.nn.Linear(c, 256), torch.nn.BatchNorm1d(256), torch.nn.LeakyReLU(0.2),
                               torch.nn.Linear(256, 1))
    opt = torch.optim.Adam(list(adaptor.parameters()) + list(disc.parameters()), lr=1e-3, weight_decay=1e-5)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (512,), generator=gen)
        f = adaptor(x[idx])
        fake = f + noise * torch.randn(f.shape, generator=gen)
        d_true, d_fake = disc(f).squeeze(1), disc(fake).squeeze(1)
        loss = torch.clamp(0.5 - d_true, min=0).mean() + torch.clamp(0.5 + d_fake, min=0).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    adaptor.eval()
    disc.eval()

    def score(grid: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            q = (torch.from_numpy(grid.reshape(-1, c).astype(np.float32)) - mu) / sd
            return (-disc(adaptor(q)).squeeze(1)).numpy().reshape(grid.shape[:2])

    return score


def main() -> None:
    import torch

    from iad_agent.eval.runner import set_threads
    from iad_agent.vision.normal_bank import image_score

    ap = argparse.ArgumentParser()
    ap.add_argument("--shots", default="1,4")
    ap.add_argument("--cats", default="")
    ap.add_argument("--max-bad", type=int, default=60)
    ap.add_argument("--noise", type=float, default=0.15)
    ap.add_argument("--elpv", action="store_true")
    a = ap.parse_args()
    set_threads(1)
    torch.set_num_threads(1)
    for cat, k, seed, refs, test, y in calib.groups(a.cats.split(",") if a.cats else None, a.elpv, a.max_bad,
                                                    a.shots.split(",")):
        config = calib.package_config(refs)
        bank = calib.plain_bank(refs, config)
        grids = [calib.grid_of(p, config) for p in refs]
        t0 = time.process_time()
        head = train_head(np.concatenate([g.reshape(-1, g.shape[-1]) for g in grids]), noise=a.noise, seed=seed)
        train_s = time.process_time() - t0
        head_level = float(np.median(np.concatenate([head(g).ravel() for g in grids])))
        out = {"knn": [], "head": [], "knn*head": []}
        for s in test:
            g = calib.grid_of(s.image_path, config)
            kn = bank.patch_distances(g)
            hd = head(g)
            out["knn"].append(image_score(kn))
            out["head"].append(image_score(hd))
            out["knn*head"].append(image_score(kn / max(float(np.median(kn)), 1e-6) + (hd - head_level)))
        calib.emit(None, {"cat": cat, "shots": str(k), "seed": seed, "train_s": round(train_s, 1), **calib.aurocs(out, y)})


if __name__ == "__main__":
    main()

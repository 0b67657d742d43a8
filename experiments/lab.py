"""Scratch experiment harness for issue 11 (not part of the package).

Feature grids are cached on disk per (image, feature config, augmentation) under
``$IAD_LAB_CACHE`` (default ``/work/research-results/cache``) so sweeps do not re-extract.
The k-shot protocol is the one of ``iad eval``: ``split_dataset`` / ``draw_references`` from
``iad_agent.eval.plan``, seeds 0..2, shots 1, 4, all (<= 50).
"""

from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from iad_agent.datasets import load_dataset
from iad_agent.eval.plan import available_datasets, draw_references, split_dataset
from iad_agent.imageio import load_image
from iad_agent.types import Sample
from iad_agent.vision.features import _MEAN, _STAGE_BLOCKS, _STD, _load_backbone

CACHE = Path(os.environ.get("IAD_LAB_CACHE", "/work/research-results/cache"))
ELPV = Path("/work/extra/elpv_pkg/elpv_dataset/data")


@dataclass(frozen=True)
class Cfg:
    backbone: str = "efficientnet-lite0"
    strides: tuple = (8, 16)
    mode: str = "square"  # square: resize to side x side; aspect: short side = side (long side capped)
    side: int = 256
    max_long: int = 1024
    smooth: int = 3
    ref: int = 0  # mode "fixed": one scale for the product, side / ref (ref = median short side of its good images)

    @property
    def key(self) -> str:
        return f"{self.backbone[-5:]}_{'-'.join(map(str, self.strides))}_{self.mode}{self.side}_L{self.max_long}_s{self.smooth}" + (f"_r{self.ref}" if self.mode == "fixed" else "")


def target_size(w: int, h: int, cfg: Cfg) -> tuple[int, int]:
    if cfg.mode == "square":
        return cfg.side, cfg.side
    scale = cfg.side / (cfg.ref if cfg.mode == "fixed" else min(w, h))
    if max(w, h) * scale > cfg.max_long:
        scale = cfg.max_long / max(w, h)
    tw, th = max(64, round(w * scale / 16) * 16), max(64, round(h * scale / 16) * 16)
    return tw, th


_models: dict = {}


@torch.inference_mode()
def forward(img: Image.Image, cfg: Cfg) -> np.ndarray:
    if cfg.backbone not in _models:
        _models[cfg.backbone] = _load_backbone(cfg.backbone)
    m = _models[cfg.backbone]
    blocks = _STAGE_BLOCKS[cfg.backbone]
    taps_at = {blocks[s]: s for s in cfg.strides}
    img = img.convert("RGB")
    size = target_size(img.width, img.height, cfg)
    if img.size != size:
        img = img.resize(size, Image.Resampling.BILINEAR)
    x = torch.from_numpy(np.asarray(img, dtype=np.float32)).permute(2, 0, 1)[None] / 255.0
    x = (x - _MEAN) / _STD
    h = m._swish(m._bn0(m._conv_stem(x)))
    taps = {}
    for i, block in enumerate(m._blocks):
        h = block(h, drop_connect_rate=0.0)
        if i in taps_at:
            taps[taps_at[i]] = h
        if i >= max(taps_at):
            break
    finest = min(taps)
    sz = taps[finest].shape[-2:]
    maps = [taps[finest]] + [F.interpolate(taps[s], size=sz, mode="bilinear", align_corners=False) for s in sorted(taps) if s != finest]
    f = torch.cat(maps, 1)
    if cfg.smooth > 1:
        f = F.avg_pool2d(f, cfg.smooth, stride=1, padding=cfg.smooth // 2, count_include_pad=False)
    return f[0].permute(1, 2, 0).contiguous().numpy()


def augment(img: Image.Image, aug: str) -> Image.Image:
    if aug == "":
        return img
    if aug == "hflip":
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if aug == "vflip":
        return img.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    if aug == "rot90":
        return img.transpose(Image.Transpose.ROTATE_90)
    if aug == "rot180":
        return img.transpose(Image.Transpose.ROTATE_180)
    if aug == "rot270":
        return img.transpose(Image.Transpose.ROTATE_270)
    if aug.startswith("rot"):  # small rotation, e.g. rot5
        return img.rotate(float(aug[3:]), resample=Image.Resampling.BILINEAR)
    if aug.startswith("shift"):
        d = int(aug[5:]) / 100
        return img.rotate(0, translate=(int(d * img.width), int(d * img.height)))
    if aug.startswith("gain"):
        g = int(aug[4:]) / 100
        return Image.eval(img, lambda px, g=g: min(255, int(px * g)))
    raise ValueError(aug)


def grid(path: Path, cfg: Cfg, aug: str = "") -> np.ndarray:
    h = hashlib.sha1(f"{Path(path).resolve()}|{aug}".encode()).hexdigest()[:16]
    f = CACHE / cfg.key / f"{h}.npy"
    if f.exists():
        return np.load(f).astype(np.float32)
    img = augment(load_image(path), aug)
    g = forward(img, cfg)
    f.parent.mkdir(parents=True, exist_ok=True)
    tmp = f.with_suffix(".tmp.npy")
    np.save(tmp, g.astype(np.float16))
    os.replace(tmp, f)
    return g


# ----------------------------------------------------------------------------- data

@dataclass
class Category:
    name: str
    pool: list[Path]
    test: list[Sample]


def elpv_category(n_pool: int = 50, n_good: int = 100, n_bad: int = 100) -> Category:
    rows = [l.split() for l in (ELPV / "labels.csv").read_text().splitlines() if l.strip()]
    good = [ELPV / r[0] for r in rows if float(r[1]) == 0.0]
    bad = [ELPV / r[0] for r in rows if float(r[1]) >= 0.67]
    idx = lambda n, k: np.unique(np.linspace(0, n - 1, k).round().astype(int))  # noqa: E731
    gsel = [good[i] for i in idx(len(good), n_pool + n_good)]
    pool = gsel[::2][:n_pool]
    testg = [g for g in gsel if g not in pool][:n_good]
    testb = [bad[i] for i in idx(len(bad), n_bad)]
    test = [Sample(p, "elpv", 0, split="test") for p in testg] + [Sample(p, "elpv", 1, split="test") for p in testb]
    return Category("elpv", pool, test)


def categories(include_elpv: bool = False, names: list[str] | None = None) -> list[Category]:
    out = []
    for dataset, root in available_datasets():
        if dataset == "deeppcb":
            continue
        from iad_agent.datasets import list_categories

        for cat in list_categories(dataset, root):
            if names and cat not in names:
                continue
            split = split_dataset(load_dataset(dataset, root, cat))
            out.append(Category(cat, split.pool, split.test))
    if include_elpv and (not names or "elpv" in names):
        out.append(elpv_category())
    return out


def groups(cat: Category, shots=(1, 4, "all"), seeds=3):
    seen = set()
    for k in shots:
        for seed in range(seeds):
            refs = draw_references(cat.pool, k, seed, cat.name)
            sig = (k, tuple(refs))
            if sig in seen:
                continue
            seen.add(sig)
            yield k, seed, refs


# ----------------------------------------------------------------------------- scoring

def top_mean(m: np.ndarray, frac: float = 0.01) -> float:
    flat = np.asarray(m, np.float64).ravel()
    k = max(1, math.ceil(flat.size * frac))
    return float(np.partition(flat, flat.size - k)[flat.size - k:].mean())


def knn_map(q: np.ndarray, bank: np.ndarray, index=None) -> np.ndarray:
    import faiss

    h, w, c = q.shape
    if index is None:
        index = faiss.IndexFlatL2(c)
        index.add(np.ascontiguousarray(bank, np.float32))
    d, _ = index.search(np.ascontiguousarray(q.reshape(-1, c), np.float32), 1)
    return np.sqrt(np.maximum(d[:, 0], 0)).reshape(h, w)


def self_map(q: np.ndarray, k: int = 4, radius: int = 2, stride: int = 1, border: int = int(os.environ.get("LAB_BORDER", "0"))) -> np.ndarray:
    """Each patch's k-th nearest distance among the patches of the same image outside its neighbourhood."""
    h, w, c = q.shape
    x = torch.from_numpy(np.ascontiguousarray(q.reshape(-1, c), np.float32))
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    yy, xx = yy.reshape(-1), xx.reshape(-1)
    sel = torch.arange(h * w)
    if stride > 1:
        m = (yy % stride == 0) & (xx % stride == 0)
        sel = sel[m]
    ref = x[sel]
    d = torch.cdist(x, ref)
    near = ((yy[:, None] - yy[sel][None]).abs() <= radius) & ((xx[:, None] - xx[sel][None]).abs() <= radius)
    d[near] = float("inf")
    kk = min(k, ref.shape[0] - 1)
    out = d.topk(kk, dim=1, largest=False).values[:, -1].reshape(h, w).numpy()
    if border:  # border patches (zero-padding context) have no look-alikes: left out
        out[:border], out[-border:], out[:, :border], out[:, -border:] = 0, 0, 0, 0
    return out


def auroc(y, s):
    from sklearn.metrics import roc_auc_score

    y = np.asarray(y)
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else None


def resize_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(m, np.float32))[None, None]
    return F.interpolate(t, size=(size[1], size[0]), mode="bilinear", align_corners=False)[0, 0].numpy()


def pixel_side(w: int, h: int, side: int = 128) -> tuple[int, int]:
    s = min(1.0, side / max(w, h))
    return max(1, round(w * s)), max(1, round(h * s))

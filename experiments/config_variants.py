"""The global look under other feature settings: which backbone stages, how much patch smoothing.

Per k-shot group (6 dev categories + ELPV, 3 seeds, at most 60 defective test images), the product is
registered as the package does (``vision.learn.learn``: self weight, levels) under each variant of the
feature configuration, and the fused look's test image AUROC is written, with the synthetic defects'
AUROC under the chosen weight (what a choice from good images would see).

    PYTHONPATH=src:experiments IAD_LAB_CACHE=/work/coarse/cache python experiments/config_variants.py dump \
        --out /work/variants/v.jsonl --variants '{"base": {}, "s8": {"strides": [8]}, "s16": {"strides": [16]}}'
    PYTHONPATH=src:experiments python experiments/config_variants.py summary /work/variants/v.jsonl
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

import calib


def binomial_pool(x: np.ndarray, k: int) -> np.ndarray:
    """Like ``grid_ops.avg_pool`` with weights ``[1, 2, 1] ⊗ [1, 2, 1]`` (k = 3): a milder smoothing."""
    assert k == 3
    b = np.array([1.0, 2.0, 1.0], np.float32)
    n, h, w, c = x.shape
    xp = np.zeros((n, h + 2, w + 2, c), dtype=np.float32)
    xp[:, 1:1 + h, 1:1 + w] = x
    ones = np.zeros((h + 2, w + 2), dtype=np.float32)
    ones[1:1 + h, 1:1 + w] = 1
    total = np.zeros((n, h, w, c), dtype=np.float32)
    count = np.zeros((h, w), dtype=np.float32)
    for dy in range(3):
        for dx in range(3):
            total += b[dy] * b[dx] * xp[:, dy:dy + h, dx:dx + w]
            count += b[dy] * b[dx] * ones[dy:dy + h, dx:dx + w]
    return total / count[None, :, :, None]


def use_binomial() -> None:
    """Replace the 3×3 box smoothing by the binomial one in both feature engines (this process only;
    use a cache folder of its own: the configuration, and so the cache key, is unchanged)."""
    import torch
    import torch.nn.functional as F

    from iad_agent.vision import grid_ops

    grid_ops.avg_pool = binomial_pool
    plain = F.avg_pool2d

    def pool2d(x, k, stride=1, padding=0, count_include_pad=True):  # noqa: ANN001, ANN202
        if k != 3:
            return plain(x, k, stride=stride, padding=padding, count_include_pad=count_include_pad)
        y = binomial_pool(x.permute(0, 2, 3, 1).numpy(), 3)
        return torch.from_numpy(y).permute(0, 3, 1, 2)

    F.avg_pool2d = pool2d


def dump(out_path: str, cats, shots, max_bad: int, variants: dict) -> None:
    from iad_agent.eval.runner import set_threads
    from iad_agent.vision.normal_bank import image_score
    from iad_agent.vision.scoring import _auroc

    set_threads(1)
    calib.smoothed_self()  # its figures in experiments/README.md predate learn.SELF_RAW
    with open(out_path, "a") as out:
        for cat, k, seed, refs, test, y in calib.groups(cats, True, max_bad, shots):
            base = calib.package_config(refs)
            row = dict(cat=cat, shots=str(k), seed=seed, test={}, syn={}, w={})
            for name, over in variants.items():
                over = {key: tuple(v) if isinstance(v, list) else v for key, v in over.items()}
                config = dataclasses.replace(base, **over)
                mat: dict = {}
                bank, cal = calib.learned_bank(refs, config, material=mat)
                held, d, maps, _ = calib.fused_maps(bank, mat, test)
                h = np.array([image_score(m) for m in held])
                t = np.array([image_score(m) for m in maps])
                row["test"][name] = round(_auroc(t[y == 0], t[y == 1]), 4)
                row["syn"][name] = round(_auroc(h[~d], h[d]), 4)
                row["w"][name] = bank.scoring.self_weight
            calib.emit(out, row)


def summary(path: str) -> None:
    calib.test_means(path)


def main() -> None:
    ap, d = calib.dump_summary_parser()
    d.add_argument("--variants", required=True)
    d.add_argument("--binomial", action="store_true", help="binomial instead of box smoothing (own cache folder!)")
    a = ap.parse_args()
    if a.cmd == "dump":
        if a.binomial:
            use_binomial()
        dump(a.out, a.cats, a.shots, a.max_bad, json.loads(a.variants))
    else:
        summary(a.path)


if __name__ == "__main__":
    main()

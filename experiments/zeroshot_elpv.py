"""Zero-shot batch scoring on the unseen ELPV cells, with the batch's brightness matching on and off.

    python experiments/zeroshot_elpv.py [--out /work/zs-results/elpv.json]

The batch is ``calib.py``'s ELPV test set (``elpv_category``: 100 good cells and 100 defective
ones, defect probability ≥ 0.67), scored as ``iad eval --shots 0`` scores a category
(``eval/zeroshot.py``: ``feature_config_for`` + ``batch_maps`` + ``score_batch``, each policy of
``ZERO_SHOT_POLICIES``), once with the batch matched to its median brightness (when its light
varies, the package's rule) and once with images as they are. Printed per policy: image AUROC,
and at the label-free threshold the balanced accuracy, false-alarm and miss rates.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from calib import elpv_category  # noqa: E402

from iad_agent.eval import metrics  # noqa: E402
from iad_agent.imageio import load_image  # noqa: E402
from iad_agent.vision.brightness import luminance_stats  # noqa: E402
from iad_agent.vision.features import FeatureExtractor  # noqa: E402
from iad_agent.zeroshot import (  # noqa: E402
    ZERO_SHOT_POLICIES,
    ZeroShotSettings,
    batch_maps,
    feature_config_for,
    score_batch,
)


def run(samples: list, match: bool) -> dict:
    start = time.perf_counter()
    sizes, stats = [], []
    for s in samples:
        img = load_image(s.image_path)
        sizes.append(img.size)
        stats.append(luminance_stats(img))
    config = feature_config_for(sizes, None, stats if match else None)
    extractor = FeatureExtractor(config)
    grids = [extractor.extract_batch([load_image(s.image_path)])[0] for s in samples]
    maps = batch_maps(grids, ZeroShotSettings(), need_self=True)
    labels = [int(s.label) for s in samples]
    out = {"brightness": list(config.brightness) if config.brightness else None, "policies": {}}
    for label, weight in ZERO_SHOT_POLICIES.items():
        settings = ZeroShotSettings() if weight is None else dataclasses.replace(ZeroShotSettings(), self_weight=weight)
        results = score_batch(maps, [s.image_path for s in samples], sizes, "elpv", settings, policy=label)
        scores = [r.score for r in results]
        m = metrics.binary_metrics(labels, [r.anomaly_present for r in results])
        out["policies"][label] = {
            "image_auroc": metrics.image_auroc(labels, scores), "balanced_accuracy": m["balanced_accuracy"],
            "false_alarm": 1 - m["tnr"], "miss": 1 - m["tpr"], "threshold": results[0].threshold,
        }
    out["wall_s"] = round(time.perf_counter() - start, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="Also write the figures here (JSON).")
    args = ap.parse_args()
    _, _, test = elpv_category()
    n_bad = sum(s.is_anomalous for s in test)
    print(f"ELPV: {len(test) - n_bad} good + {n_bad} defective cells, one zero-shot batch")
    lum = np.array([luminance_stats(load_image(s.image_path))[0] for s in test])
    print(f"luminance means: {lum.min():.0f}–{lum.max():.0f}, coefficient of variation {lum.std() / lum.mean():.3f}")
    res = {"off": run(test, False), "on": run(test, True)}
    print(f"brightness target (on): {res['on']['brightness']}")
    print(f"{'policy':18} {'matching':8} {'AUROC':>6} {'bal.acc':>7} {'false alarm':>11} {'miss':>6}")
    for label in ZERO_SHOT_POLICIES:
        for way in ("off", "on"):
            p = res[way]["policies"][label]
            print(f"{label:18} {way:8} {p['image_auroc']:6.3f} {p['balanced_accuracy']:7.3f} "
                  f"{p['false_alarm']:11.2f} {p['miss']:6.2f}")
    print(f"wall: off {res['off']['wall_s']} s, on {res['on']['wall_s']} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()

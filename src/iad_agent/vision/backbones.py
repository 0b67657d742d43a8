"""Bring your own backbone: a local Hugging Face vision model or a timm model as the feature extractor.

``--backbone`` (``iad register``, ``api.register``, ``iad eval``) takes

* ``efficientnet-lite0`` / ``-lite1`` / ``-lite2``: the packaged backbones (the default; nothing to load);
* a local folder of a Hugging Face vision model (``config.json`` + weights, as
  ``huggingface-cli download ... --local-dir`` or ``save_pretrained`` write it; ``hf:FOLDER`` is the
  same): ViTs (DINOv2, DINOv2 with registers, DINOv3, ViT, the vision tower of CLIP and SigLIP)
  give their patch tokens reshaped to the patch grid (class and register tokens dropped);
  convolutional models (ConvNeXt, ResNet, DINOv3-ConvNeXt, ...) give their stage feature maps;
* ``timm:MODEL_NAME:CHECKPOINT``: a timm model built with ``features_only=True`` and its weights
  read from the local checkpoint file (``.safetensors``, ``.pth``, ``.bin``); needs the ``timm``
  extra.

Which layers are tapped (``layers``) defaults to what suits the family: the last block of DINO
ViTs (AnomalyDINO's choice), the blocks at ½ and ¾ of the depth of other ViTs (CLIP, SigLIP:
their intermediate layers are more local than the last), and the stride-8 and stride-16 stages
of convolutional models (PatchCore's layer2 + layer3). For Hugging Face models a layer is an
index into ``hidden_states`` (0 = the patch embeddings, ``i`` = the output of block or stage
``i``; the model's last layer is taken from its own output, normalised as the model normalises
it); for timm it is a feature level (``out_indices``).

Everything a product needs to rebuild the same features is a :class:`BackboneSpec`, saved in
the product's feature config: kind, path, model, layers, input normalisation (from the folder's
``preprocessor_config.json``, else the family's), the grid's stride and the multiple input sides
are rounded to (a ViT's patch size, so the aspect ratio is kept as for the CNNs and the
positional embeddings are interpolated to the grid), and a fingerprint of the model files. A
product whose backbone folder or checkpoint has gone missing, or was replaced by another model,
refuses to load and names it (:meth:`BackboneSpec.problem`).

Nothing is downloaded: Hugging Face models load with ``local_files_only=True``, timm models with
``pretrained_cfg_overlay={"file": CHECKPOINT}``.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iad_agent.extras import require

if TYPE_CHECKING:
    import torch

    from iad_agent.vision.features import Backbone, FeatureConfig

# torch is imported where a model is built or run, not here: an inspection with the packaged
# backbone runs on numpy (:mod:`iad_agent.vision.lite_numpy`) and never imports it.

PACKAGED = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_FAMILY_NORM = {  # used when the model folder has no preprocessor_config.json
    "clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "clip_vision_model": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "siglip_vision_model": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
_PROBE = 224  # side of the probe image: a multiple of every usual patch size (8, 14, 16, 32) and stride
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")
USAGE = ("efficientnet-lite0 / -lite1 / -lite2, a local Hugging Face model folder (DINOv2, DINOv3, CLIP, SigLIP, "
         "ConvNeXt, ResNet, ...), or timm:MODEL_NAME:CHECKPOINT")


@dataclass(frozen=True)
class BackboneSpec:
    """A custom backbone, described well enough to rebuild it and to size its inputs without loading it.

    Attributes:
        kind: ``hf`` (a Hugging Face model folder) or ``timm``.
        path: the model folder (``hf``) or the checkpoint file (``timm``), absolute.
        model: the model type (``dinov2``, ``clip``, ``convnext``, ...) or the timm model name.
        layers: the tapped layers (``hidden_states`` indices, or timm feature levels).
        tokens: the taps are ViT patch tokens (else feature maps).
        mean / std: input normalisation (RGB in 0..1).
        stride: input pixels per patch of the grid (the finest tap's stride; a ViT's patch size).
        multiple: input sides are rounded to a multiple of this (a ViT's patch size; a CNN's
            coarsest stride, so every stage tiles the input).
        fingerprint: of the model files (names, sizes, the config), to notice a replaced model.
    """

    kind: str
    path: str
    model: str
    layers: tuple[int, ...]
    tokens: bool
    mean: tuple[float, float, float] = IMAGENET[0]
    std: tuple[float, float, float] = IMAGENET[1]
    stride: int = 16
    multiple: int = 16
    fingerprint: str = ""

    def __post_init__(self) -> None:
        if self.kind not in ("hf", "timm"):
            raise ValueError(f"unknown backbone kind {self.kind!r} (hf or timm)")
        if not self.layers or self.stride < 1 or self.multiple < 1 or len(self.mean) != 3 or len(self.std) != 3:
            raise ValueError(f"incomplete backbone description: {self}")

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.model}:{self.path}"

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> BackboneSpec:
        d = dict(d)
        for k in ("layers", "mean", "std"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)

    def problem(self) -> str | None:
        """Why this backbone cannot be rebuilt as registered (missing, or another model now), or None."""
        where = Path(self.path)
        what = "model folder" if self.kind == "hf" else "checkpoint"
        if not (where.is_dir() if self.kind == "hf" else where.is_file()):
            return f"its backbone's {what} {where} is missing"
        if self.fingerprint and fingerprint(self.kind, where, self.model) != self.fingerprint:
            return f"its backbone's {what} {where} holds another model now (its config or weight files changed)"
        return None


# ----------------------------------------------------------------------------- describing a backbone
def feature_config(backbone: str = "efficientnet-lite0", resolution: int = 256, layers: Sequence[int] | None = None,
                   **kwargs: Any) -> FeatureConfig:
    """The :class:`FeatureConfig` of a ``--backbone`` choice (a custom backbone is loaded once to describe it).

    >>> feature_config("efficientnet-lite2", 320).backbone
    'efficientnet-lite2'

    Raises:
        ValueError: an unknown backbone, a folder or checkpoint that does not exist or holds no
            usable model, layers out of range, or ``layers`` with a packaged backbone.
        MissingExtra: the ``backbones`` extra (transformers) or the ``timm`` package is not installed.
    """
    from iad_agent.vision.features import FeatureConfig

    layers = tuple(int(x) for x in layers) if layers else ()
    if backbone in PACKAGED:
        if layers:
            raise ValueError(f"--layers is for custom backbones; {backbone} always taps its stride-8 and stride-16 stages")
        return FeatureConfig(backbone=backbone, resolution=resolution, **kwargs)
    spec = describe(backbone, layers)
    kwargs.setdefault("smooth", 1 if spec.tokens else 3)  # ViT patches already see their neighbours (AnomalyDINO: none)
    return FeatureConfig(backbone=spec.name, resolution=resolution, spec=spec, **kwargs)


def describe(backbone: str, layers: Sequence[int] = ()) -> BackboneSpec:
    """Describe a custom ``--backbone`` (loading it, from local files only)."""
    if backbone.startswith("timm:"):
        name, _, checkpoint = backbone[len("timm:"):].partition(":")
        if not name or not checkpoint:
            raise ValueError(f"--backbone {backbone!r}: write timm:MODEL_NAME:CHECKPOINT, e.g. "
                             "timm:resnet18:/models/resnet18.safetensors")
        return _describe_timm(name, Path(checkpoint).expanduser(), tuple(layers))
    folder = Path(backbone[len("hf:"):] if backbone.startswith("hf:") else backbone).expanduser()
    if not folder.is_dir():
        raise ValueError(f"--backbone {backbone!r}: no such folder; choose {USAGE}")
    if not (folder / "config.json").is_file():
        raise ValueError(f"{folder}: not a Hugging Face model folder (no config.json); "
                         "download one with `huggingface-cli download MODEL --local-dir DIR`")
    return _describe_hf(folder.resolve(), tuple(layers))


def fingerprint(kind: str, path: Path, model: str) -> str:
    """A short hash of the model files' names and sizes (and the config), cheap to check at every load."""
    h = hashlib.sha256(f"{kind}:{model if kind == 'timm' else ''}".encode())  # hf: config.json names the model
    files = sorted(p for p in path.iterdir() if p.suffix in _WEIGHT_SUFFIXES) if kind == "hf" else [path]
    if kind == "hf":
        h.update((path / "config.json").read_bytes())
    for p in files:
        h.update(f"{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()[:16]


def _pick_layers(asked: tuple[int, ...], n: int, default: tuple[int, ...], where: Path, what: str) -> tuple[int, ...]:
    """``asked`` (negative counts from the end) checked against ``0..n``, or ``default``."""
    out = []
    for layer in asked or default:
        i = layer + n + 1 if layer < 0 else layer
        if not 0 <= i <= n:
            raise ValueError(f"{where}: layer {layer} is out of range: this model's layers are 0..{n} ({what})")
        out.append(i)
    return tuple(sorted(set(out)))


def _hf_norm(folder: Path, model_type: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    pre = folder / "preprocessor_config.json"
    if pre.is_file():
        try:
            d = json.loads(pre.read_text(encoding="utf-8"))
            mean, std = d.get("image_mean"), d.get("image_std")
            if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3:
                return tuple(float(x) for x in mean), tuple(float(x) for x in std)
        except (OSError, ValueError):
            pass
    return _FAMILY_NORM.get(model_type, IMAGENET)


def _describe_hf(folder: Path, layers: tuple[int, ...]) -> BackboneSpec:
    fp = fingerprint("hf", folder, "")
    import torch

    model, model_type, patch = _load_hf(str(folder), fp)  # cached: the extractor built next reuses it
    with torch.inference_mode():
        hidden = _hf_forward(model, torch.zeros(1, 3, _PROBE, _PROBE)).hidden_states
    n = len(hidden) - 1
    mean, std = _hf_norm(folder, model_type)
    if hidden[-1].ndim == 3:  # ViT tokens
        if not patch:
            raise ValueError(f"{folder}: a {model_type} model gives tokens but its config has no patch_size")
        dino = model_type.startswith("dino")
        default = (n,) if dino else (n // 2, (3 * n) // 4)
        picked = _pick_layers(layers, n, default, folder, "0 = the patch embeddings, i = the output of block i")
        stride = multiple = patch
    else:  # feature maps
        strides = [_PROBE // h.shape[-1] for h in hidden]
        default = tuple(max(i for i, s in enumerate(strides) if s == want) for want in (8, 16) if want in strides)
        picked = _pick_layers(layers, n, default or (n - 1, n), folder, "0 = the stem, i = the output of stage i")
        stride, multiple = min(strides[i] for i in picked), max(strides)
    return BackboneSpec("hf", str(folder), model_type, picked, hidden[-1].ndim == 3, mean, std, stride, multiple, fp)


def _describe_timm(name: str, checkpoint: Path, layers: tuple[int, ...]) -> BackboneSpec:
    if not checkpoint.is_file():
        raise ValueError(f"--backbone timm:{name}:{checkpoint}: no such checkpoint file")
    checkpoint = checkpoint.resolve()
    require("timm", "timm")
    import timm

    if not timm.is_model(name):
        raise ValueError(f"--backbone timm:{name}:...: timm has no model named {name!r} (timm.list_models() lists them)")
    probe = _timm_create(name, pretrained=False)  # random weights: only its feature levels and normalisation are read
    reductions = [int(f["reduction"]) for f in probe.feature_info]
    n = len(reductions) - 1
    tokens = len(set(reductions)) == 1  # a ViT: every block at the patch stride
    if tokens:
        default = (n,) if "dino" in name else (n // 2, (3 * n) // 4)
    else:
        default = tuple(max(i for i, r in enumerate(reductions) if r == want) for want in (8, 16) if want in reductions)
    picked = _pick_layers(layers, n, default or (n - 1, n), checkpoint, "timm feature levels")
    cfg = probe.pretrained_cfg
    mean, std = tuple(cfg.get("mean", IMAGENET[0])), tuple(cfg.get("std", IMAGENET[1]))
    spec = BackboneSpec("timm", str(checkpoint), name, picked, tokens, mean, std, min(reductions[i] for i in picked),
                        max(reductions), fingerprint("timm", checkpoint, name))
    _load_timm(spec.path, spec.model, spec.layers, spec.fingerprint)  # the checkpoint must fit the model: fail now
    return spec


# ----------------------------------------------------------------------------- building a backbone
def build_backbone(config: FeatureConfig) -> Backbone:
    """The one factory: the backbone a :class:`FeatureConfig` describes."""
    spec = config.spec
    if spec is None:
        from iad_agent.vision.features import EfficientNetLite

        return EfficientNetLite(config.backbone, config.strides)
    problem = spec.problem()
    if problem:
        raise FileNotFoundError(f"cannot build the feature extractor: {problem}")
    return HFBackbone(spec) if spec.kind == "hf" else TimmBackbone(spec)


class HFBackbone:
    """A Hugging Face vision model: its ``hidden_states`` at ``spec.layers``, tokens reshaped to the patch grid."""

    def __init__(self, spec: BackboneSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.model, _, self.patch = _load_hf(spec.path, spec.fingerprint)
        self.strides = tuple(spec.stride for _ in spec.layers) if spec.tokens else ()

    def __call__(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        out = _hf_forward(self.model, x)
        hidden, n = out.hidden_states, len(out.hidden_states) - 1
        taps = {}
        for layer in self.spec.layers:
            h = hidden[layer]
            if h.ndim == 3:  # (N, tokens, C): the last layer as the model outputs it (its final norm), the grid's tokens only
                last = getattr(out, "last_hidden_state", None)
                if layer == n and last is not None and last.shape == h.shape:
                    h = last
                gh, gw = x.shape[-2] // self.patch, x.shape[-1] // self.patch
                if h.shape[1] < gh * gw:
                    raise RuntimeError(f"{self.spec.path}: {h.shape[1]} tokens for a {gh}×{gw} patch grid")
                h = h[:, h.shape[1] - gh * gw:].transpose(1, 2).reshape(h.shape[0], h.shape[2], gh, gw)
            taps[layer] = h
        return taps


class TimmBackbone:
    """A timm model with ``features_only=True`` and the weights of a local checkpoint."""

    def __init__(self, spec: BackboneSpec) -> None:
        self.spec = spec
        self.name = spec.name
        self.model = _load_timm(spec.path, spec.model, spec.layers, spec.fingerprint)
        self.strides = tuple(self.model.feature_info.reduction())

    def __call__(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        maps = self.model(x)
        if str(getattr(self.model, "output_fmt", "NCHW")).endswith("NHWC"):  # e.g. Swin: channels last
            maps = [m.permute(0, 3, 1, 2) for m in maps]
        return dict(zip(self.spec.layers, maps))


def _hf_forward(model: torch.nn.Module, x: torch.Tensor) -> Any:
    kwargs = {"interpolate_pos_encoding": True} if _takes(model, "interpolate_pos_encoding") else {}
    return model(pixel_values=x, output_hidden_states=True, **kwargs)


def _takes(model: torch.nn.Module, arg: str) -> bool:
    return arg in inspect.signature(model.forward).parameters


@functools.lru_cache(maxsize=2)
def _load_hf(folder: str, fingerprint_: str) -> tuple[torch.nn.Module, str, int]:
    """``(model, model_type, patch size or 0)``, cached per folder and model files (eval builds many products)."""
    require("backbones", "transformers")
    from transformers import AutoConfig, AutoModel

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        import torch

        model = AutoModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32)
    except Exception as exc:  # noqa: BLE001 - missing or damaged files, an unknown model type, wrong weights: the folder's fault
        raise ValueError(f"{folder}: cannot load this Hugging Face model from local files ({exc})") from exc
    vision = getattr(config, "vision_config", None)
    if vision is not None:  # a two-tower model (CLIP, SigLIP): its vision tower only
        tower = getattr(model, "vision_model", None)
        if tower is None:
            raise ValueError(f"{folder}: a {config.model_type} model without a vision_model to take patch features from")
        model, config_ = tower, vision
    else:
        config_ = config
    if _takes(model, "pixel_attention_mask") or _takes(model, "spatial_shapes"):
        raise ValueError(f"{folder}: {config.model_type}'s variable-resolution vision tower is not supported; "
                         "use a fixed-patch ViT (DINOv2, DINOv3, CLIP, SigLIP) or a CNN")
    patch = getattr(config_, "patch_size", 0) or 0
    patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch)
    return model.eval().requires_grad_(False), config.model_type, patch


def _timm_create(name: str, **kwargs: Any) -> torch.nn.Module:
    """A timm model; ViTs built with ``dynamic_img_size`` so that they take inputs of any size (positional
    embeddings interpolated to the grid), models without that option built as they are."""
    import timm

    try:
        return timm.create_model(name, dynamic_img_size=True, **kwargs)
    except TypeError:
        return timm.create_model(name, **kwargs)


@functools.lru_cache(maxsize=2)
def _load_timm(checkpoint: str, name: str, layers: tuple[int, ...], fingerprint_: str) -> torch.nn.Module:
    require("timm", "timm")
    try:
        model = _timm_create(name, pretrained=True, pretrained_cfg_overlay={"file": checkpoint}, features_only=True,
                             out_indices=layers)
    except Exception as exc:  # noqa: BLE001 - a damaged checkpoint or one of another model: the checkpoint's fault
        raise ValueError(f"{checkpoint}: cannot load it into timm's {name} ({type(exc).__name__}: {str(exc)[:300]})") from exc
    return model.eval().requires_grad_(False)


def resize_taps(taps: dict[int, torch.Tensor]) -> torch.Tensor:
    """The taps concatenated on the grid of the largest (finest) one, ordered by key, finest first."""
    import torch
    import torch.nn.functional as F

    keys = sorted(taps)
    finest = max(keys, key=lambda k: taps[k].shape[-2] * taps[k].shape[-1])
    grid = taps[finest].shape[-2:]
    maps = [taps[finest]] + [taps[k] if taps[k].shape[-2:] == grid else
                             F.interpolate(taps[k], size=grid, mode="bilinear", align_corners=False)
                             for k in keys if k != finest]
    return torch.cat(maps, dim=1)


"""Registered products: the normal bank, labelled defect examples, priors and gate parameters.

A product lives in ``<workspace>/products/<name>/``. Registration writes into a temporary
folder and swaps it in atomically, so a failed or interrupted registration never loses what
was registered before.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
from PIL import Image

from iad_agent.imageio import DEFAULT_MAX_SIDE, ImageError, atomic_write_text, load_image
from iad_agent.vision.features import FeatureConfig, FeatureExtractor
from iad_agent.vision.learn import N_SYNTHETIC, augmented_views, learn
from iad_agent.vision.normal_bank import NormalBank

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RegistrationError(ValueError):
    """Registration refused; the message names the offending file or folder."""


@dataclass
class GateParams:
    """When the embedded policy calls a tool, and how much each tool's evidence weighs.

    Saved with the product (``gate.json``) so reinforcement learning or a user can change them.

    Attributes:
        band_low / band_high: the uncertainty band on the global score ratio
            (score / threshold); inside it the policy looks closer.
        small_area: a hot spot covering less than this fraction of the image counts as
            fine-grained (then the high-frequency check, if weighted, follows the zoom).
        texture: the product is texture-like (set at registration from how much position
            matters).
        zoom_textures: a texture is zoomed into even when its global score is clearly
            normal (below the band), since low-resolution global features can miss fine
            breaks in repetitive patterns.
        aligned_informative: position-wise comparison with a good reference is meaningful
            (aligned parts); otherwise the comparative retriever's evidence is not used.
        mixed_geometry: the good images do not share one shape (aspect ratios differ by more
            than ``ASPECT_TOLERANCE``), so "the same region" of two images is not the same
            place on the part: the position-based tools (zoom against the same region of good
            parts, aligned comparison) are not called. A query whose shape differs from the
            good images' is treated the same way.
        type_from_priors: without labelled defect examples, name the defect type by matching
            the evidence, in words, against the priors' defect descriptions (MiniLM).
        w_zoom / w_compare / w_highfreq: weights of each tool's evidence in the fused score; a
            tool of weight 0 is not called by the embedded policy. The high-frequency enhancer
            has weight 0 by default: in the benchmark's ablation (``docs/benchmarks.md``) the
            agent was more accurate without it at 1 and 4 shots. It stays available to VLM
            policies and to users who set a weight.
        zoom_threshold / compare_threshold / highfreq_threshold: each tool's normal level,
            calibrated on held-out good images at registration.
    """

    band_low: float = 0.75
    band_high: float = 1.5
    small_area: float = 0.02
    texture: bool = False
    zoom_textures: bool = False
    aligned_informative: bool = True
    mixed_geometry: bool = False
    w_zoom: float = 1.0
    w_compare: float = 0.5
    w_highfreq: float = 0.0
    zoom_threshold: float = 1.5
    compare_threshold: float = 1.0
    highfreq_threshold: float = 1.5
    type_from_priors: bool = True

    @classmethod
    def from_dict(cls, d: dict) -> GateParams:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise RegistrationError(f"{folder}: not a folder")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))


@dataclass
class DefectExamples:
    """Labelled defect examples: an anomaly signature per image, with its defect type."""

    types: list[str] = field(default_factory=list)
    signatures: np.ndarray | None = None  # (n, C) L2-normalised
    paths: list[str] = field(default_factory=list)

    def classify(self, signature: np.ndarray, top: int = 3) -> list[dict]:
        """Defect-type candidates by the best cosine similarity of their examples."""
        if self.signatures is None or not len(self.types):
            return []
        sims = self.signatures @ signature
        best: dict[str, float] = {}
        for t, s in zip(self.types, sims):
            best[t] = max(best.get(t, -1.0), float(s))
        ranked = sorted(best.items(), key=lambda kv: -kv[1])[:top]
        return [{"defect_type": t, "similarity": round(s, 4)} for t, s in ranked]


def anomaly_signature(grid: np.ndarray, patch_map: np.ndarray, fraction: float = 0.02) -> np.ndarray:
    """Mean feature of the most anomalous patches (what the defect looks like), L2-normalised."""
    flat = grid.reshape(-1, grid.shape[-1]).astype(np.float32)
    k = max(1, int(flat.shape[0] * fraction))
    top = np.argpartition(patch_map.ravel(), -k)[-k:]
    sig = flat[top].mean(axis=0) - flat.mean(axis=0)
    return sig / max(float(np.linalg.norm(sig)), 1e-8)


class Product:
    """Everything the inspector knows about one product."""

    def __init__(self, name: str, bank: NormalBank, gate: GateParams, folder: Path | None = None,
                 defects: DefectExamples | None = None, priors: dict[str, str] | None = None,
                 max_side: int = DEFAULT_MAX_SIDE, image_size: tuple[int, int] | None = None) -> None:
        self.name = name
        self.image_size = tuple(image_size) if image_size else None  # (width, height) of the good images
        self.bank = bank
        self.gate = gate
        self.folder = folder
        self.defects = defects or DefectExamples()
        self.priors = priors or {}
        self.max_side = max_side
        self._extractor: FeatureExtractor | None = None
        self._images: OrderedDict[int, Image.Image] = OrderedDict()

    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            self._extractor = FeatureExtractor(self.bank.config)
        return self._extractor

    @property
    def defect_types(self) -> list[str]:
        types = list(dict.fromkeys(self.defects.types))
        for key in self.priors:
            if key not in ("good", "normal") and key not in types:
                types.append(key)
        return types

    def reference_image(self, index: int) -> Image.Image:
        """A registered good image (LRU-cached; reloaded from its path when needed)."""
        if index in self._images:
            self._images.move_to_end(index)
            return self._images[index]
        img = load_image(self.bank.paths[index], self.max_side)
        self._images[index] = img
        if len(self._images) > 16:
            self._images.popitem(last=False)
        return img

    # --------------------------------------------------------------- building
    @classmethod
    def build(
        cls,
        name: str,
        normals: Sequence[str | Path],
        config: FeatureConfig | None = None,
        fpr: float = 0.05,
        defects_dir: str | Path | None = None,
        priors: dict[str, str] | None = None,
        allow_mixed_sizes: bool = False,
        max_side: int = DEFAULT_MAX_SIDE,
        max_patches: int = 16_384,
        progress: Callable[[int, int], None] | None = None,
        existing: Product | None = None,
        selfsim: bool = True,
    ) -> Product:
        """Register good images (and optional defect examples) as a product.

        What the product learns from its good images (the self-similarity weight of its
        scoring, its calibration) is set here, from synthetic defects and held-out good images
        (:mod:`iad_agent.vision.learn`), and saved with it. ``selfsim=False`` keeps plain
        nearest-neighbour scoring. ``progress(done, total)`` counts images and synthetic defects.

        Raises:
            RegistrationError: no images, an unreadable image, or (unless
                ``allow_mixed_sizes``) an image whose size differs from the others.
        """
        if not NAME_RE.match(name):
            raise RegistrationError(f"invalid product name {name!r}: use letters, digits, '_', '-', '.'")
        paths = [Path(p) for p in normals]
        if not paths and existing is None:
            raise RegistrationError("no good images given: a product needs at least one good image")
        images = _load_all(paths, allow_mixed_sizes, max_side, reference_size=existing.image_size if existing else None)
        config = config or FeatureConfig()
        if existing is None and config.keep_aspect and not config.reference_side and len({im.size for im in images}) > 1:
            # good images of mixed sizes (crops): one scale for all, so a defect keeps its size in patches
            config = replace(config, reference_side=int(np.median([min(im.size) for im in images])))
        extractor = existing.extractor if existing else FeatureExtractor(config)
        total = len(images) + N_SYNTHETIC
        grids: list[np.ndarray] = []
        for i in range(0, len(images), extractor.batch_size):
            grids.extend(extractor(images[i : i + extractor.batch_size]))
            if progress:
                progress(min(i + extractor.batch_size, len(images)), total)
        bank = existing.bank if existing else NormalBank(extractor.config, max_patches=max_patches)
        if grids:
            bank.add(grids, [str(p.resolve()) for p in paths])
        gate = existing.gate if existing else GateParams()
        product = cls(name, bank, gate, existing.folder if existing else None,
                      existing.defects if existing else None, dict(existing.priors) if existing else {}, max_side)
        product._extractor = extractor
        product.image_size = existing.image_size if existing and existing.image_size else (images[0].size if images else None)
        if product.image_size and any(not same_shape(im.size, product.image_size) for im in images):
            gate.mixed_geometry = True
        for offset, img in enumerate(images[-16:]):  # warm the cache: calibration reads these back
            product._images[len(bank) - len(images[-16:]) + offset] = img
        if priors:
            product.priors.update(priors)
        views = None
        if len(bank) == 1:  # one good image: its augmented views stand in for held-out good parts
            first = images[0] if images else product.reference_image(0)
            images_v = augmented_views(first)
            views = (images_v, list(extractor(images_v)))
        step = (lambda done, n: progress(len(images) + done, total)) if progress else None
        bank.scoring, bank.calibration = learn(bank, extractor, product.reference_image, fpr, views=views,
                                               selfsim=selfsim, progress=step)
        product._calibrate_gate(views)
        if defects_dir is not None:
            product.add_defect_examples(defects_dir, allow_mixed_sizes)
        return product

    def _calibrate_gate(self, views: tuple[list[Image.Image], np.ndarray] | None = None) -> None:
        """Set tool thresholds and texture-likeness from held-out good images.

        Args:
            views: with a single good image, its augmented views and their feature grids
                (extracted once and shared with the bank's calibration).
        """
        from iad_agent.tools.calibration import calibrate_tools

        cal = self.bank.calibration
        ratio = float(np.median(cal.knn_scores or cal.global_scores) / max(np.median(cal.aligned_scores), 1e-8))
        # Aligned parts: the nearest patch anywhere is hardly closer than the one in place.
        self.gate.aligned_informative = ratio > 0.6
        if len(self.bank) == 1 and views is None:
            imgs = augmented_views(self.reference_image(0))
            views = (imgs, list(self.extractor(imgs)))
        self.gate.texture = texture_likeness(self.bank, None if len(self.bank) > 1 else views[1][0]) < 0.8
        calibrate_tools(self, views=views)

    def add_defect_examples(self, folder: str | Path, allow_mixed_sizes: bool = True) -> None:
        """Register labelled defect examples: ``folder/<defect_type>/*.png``."""
        folder = Path(folder)
        subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")) if folder.is_dir() else []
        if not subdirs:
            raise RegistrationError(f"{folder}: expected one subfolder per defect type with example images")
        types, sigs, paths = list(self.defects.types), [], list(self.defects.paths)
        for sub in subdirs:
            files = list_images(sub)
            if not files:
                raise RegistrationError(f"{sub}: defect type folder has no images")
            imgs = _load_all(files, True, self.max_side)
            grids = self.extractor(imgs)
            for f, grid in zip(files, grids):
                sigs.append(anomaly_signature(grid, self.bank.patch_distances(grid)))
                types.append(sub.name)
                paths.append(str(f.resolve()))
        old = self.defects.signatures
        new = np.stack(sigs)
        self.defects = DefectExamples(types, new if old is None else np.concatenate([old, new]), paths)

    # ------------------------------------------------------------ persistence
    def save(self, folder: str | Path) -> None:
        """Write the product to ``folder`` atomically (build aside, then swap)."""
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
        try:
            self.bank.save(tmp / "bank")
            atomic_write_text(tmp / "gate.json", json.dumps(asdict(self.gate), indent=1))
            atomic_write_text(tmp / "product.json", json.dumps({"name": self.name, "max_side": self.max_side, "image_size": self.image_size}, indent=1))
            if self.priors:
                atomic_write_text(tmp / "priors.json", json.dumps(self.priors, indent=1))
            if self.defects.signatures is not None:
                np.save(tmp / "defects.npy", self.defects.signatures)
                atomic_write_text(tmp / "defects.json", json.dumps({"types": self.defects.types, "paths": self.defects.paths}))
            old = folder.with_name(f".{folder.name}.old")
            if old.exists():
                shutil.rmtree(old)
            if folder.exists():
                os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.folder = folder

    @classmethod
    def load(cls, folder: str | Path) -> Product:
        folder = Path(folder)
        if not (folder / "product.json").exists():
            raise FileNotFoundError(f"{folder}: no registered product here (product.json missing)")
        meta = json.loads((folder / "product.json").read_text())
        gate = GateParams.from_dict(json.loads((folder / "gate.json").read_text()))
        priors = json.loads((folder / "priors.json").read_text()) if (folder / "priors.json").exists() else {}
        defects = None
        if (folder / "defects.npy").exists():
            d = json.loads((folder / "defects.json").read_text())
            defects = DefectExamples(d["types"], np.load(folder / "defects.npy"), d["paths"])
        return cls(meta["name"], NormalBank.load(folder / "bank"), gate, folder, defects, priors, meta.get("max_side", DEFAULT_MAX_SIDE),
                   meta.get("image_size"))


def _load_all(paths: Sequence[Path], allow_mixed_sizes: bool, max_side: int, reference_size: tuple[int, int] | None = None) -> list[Image.Image]:
    images, problems = [], []
    size = reference_size
    for p in paths:
        try:
            img = load_image(p, max_side)
        except ImageError as exc:
            problems.append(str(exc))
            continue
        if size is None:
            size = img.size
        elif img.size != tuple(size) and not allow_mixed_sizes:
            problems.append(f"{p}: image is {img.width}x{img.height} but the product's images are {size[0]}x{size[1]} "
                            "(pass --allow-mixed-sizes to register it resized)")
            continue
        images.append(img)
    if problems:
        raise RegistrationError("cannot register; fix or remove these files:\n  " + "\n  ".join(problems))
    return images


ASPECT_TOLERANCE = 0.05


def same_shape(size: tuple[int, int], other: tuple[int, int], tolerance: float = ASPECT_TOLERANCE) -> bool:
    """Whether two ``(width, height)`` sizes have the same aspect ratio (within ``tolerance``).

    >>> same_shape((1024, 1024), (256, 256)), same_shape((529, 317), (123, 286))
    (True, False)
    """
    a, b = size[0] / max(size[1], 1), other[0] / max(other[1], 1)
    return abs(math.log(a / b)) <= math.log1p(tolerance)


def texture_likeness(bank: NormalBank, held_out: np.ndarray | None = None) -> float:
    """How well a good image's patches are matched *within itself* versus by another good image.

    Textures repeat, so nearly every patch (90th percentile) finds a close match elsewhere in
    its own image (≈ 1 or below); objects have unique parts that only another good image
    matches (well above 1). ``held_out`` is a grid scored against the bank when the bank has a
    single image (an augmented view of it).
    """
    grid = bank.grids[0].astype(np.float32)
    h, w, c = grid.shape
    flat = grid.reshape(-1, c)
    sub = flat[::3]
    d = np.sqrt(np.maximum((flat**2).sum(1)[:, None] - 2 * flat @ sub.T + (sub**2).sum(1)[None], 0))
    yy, xx = np.divmod(np.arange(h * w), w)
    near = (np.abs(yy[:, None] - yy[None, ::3]) <= 2) & (np.abs(xx[:, None] - xx[None, ::3]) <= 2)
    d[near] = np.inf
    within = float(np.quantile(d.min(axis=1), 0.9))
    across_map = bank.patch_distances(grid, exclude=0) if len(bank) > 1 else bank.patch_distances(held_out)
    across = float(np.quantile(across_map, 0.9))
    return within / max(across, 1e-8)


class Workspace:
    """The folder of registered products: ``--workspace``, else ``$IAD_WORKSPACE``, else ``~/.iad``."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root or os.environ.get("IAD_WORKSPACE") or Path.home() / ".iad").expanduser()

    def product_dir(self, name: str) -> Path:
        if not NAME_RE.match(name):
            raise RegistrationError(f"invalid product name {name!r}: use letters, digits, '_', '-', '.'")
        return self.root / "products" / name

    def products(self) -> list[str]:
        d = self.root / "products"
        return sorted(p.name for p in d.iterdir() if (p / "product.json").exists()) if d.exists() else []

    def load(self, name: str) -> Product:
        folder = self.product_dir(name)
        if not (folder / "product.json").exists():
            known = ", ".join(self.products()) or "none"
            raise FileNotFoundError(f"product {name!r} is not registered in {self.root} (registered: {known}); "
                                    f"run `iad register {name} --normals DIR` first")
        return Product.load(folder)

    def exists(self, name: str) -> bool:
        return (self.product_dir(name) / "product.json").exists()

"""Registered products: the normal bank, labelled defect examples, priors and gate parameters.

A product lives in ``<workspace>/products/<name>``, stored as versions (``iad_agent.store``):
a registration is written aside and becomes current in one rename, under a per-product lock,
so an interrupted or concurrent registration never loses or corrupts what was registered
before. Loading validates every file and names the damaged one (``product_files``).

Registering images that are already registered (same decoded pixels, whatever their path) is
skipped and reported; a calibration that would store a zero or non-finite limit is refused.
Heavy modules (torch, faiss) are imported only when features are needed.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from iad_agent.errors import (  # noqa: F401  (the errors of stored products; importable from here too)
    ConcurrentRegistration,
    DamagedProduct,
    IADError,
    ProductError,
    ProductNotFound,
    RegistrationError,
    WorkspaceError,
)
from iad_agent.imageio import DEFAULT_MAX_SIDE, IMAGE_SUFFIXES, ImageError, load_image, scan_images  # noqa: F401
from iad_agent.store import NAME_RE, check_name  # noqa: F401  (product names; kept importable from here)
from iad_agent.tools.base import ToolLimits

if TYPE_CHECKING:
    from iad_agent.defect_types import TextIndex
    from iad_agent.registration import Registration
    from iad_agent.vision.features import FeatureConfig, FeatureExtractor
    from iad_agent.vision.normal_bank import NormalBank

log = logging.getLogger(__name__)

DEFAULT_FPR = 0.05


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
            policies and to users who set a weight. ``w_zoom`` and ``w_compare`` are learned at
            registration from held-out good images and synthetic defects
            (:mod:`iad_agent.vision.tool_weights`); the defaults are the hand-set weights that
            products stored before that keep.
        weights_from: where ``w_zoom`` / ``w_compare`` come from: ``"default"`` (hand-set) or
            ``"synthetic-defects"`` (learned at registration).

    Each tool's calibrated normal level is not a gate parameter: it is the product's
    :class:`~iad_agent.tools.base.ToolLimits` (``limits.json``).
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
    type_from_priors: bool = True
    weights_from: str = "default"

    @classmethod
    def from_dict(cls, d: dict) -> GateParams:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def list_images(folder: str | Path, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (and its subfolders when ``recursive``), sorted; hidden ones skipped.

    Raises:
        RegistrationError: ``folder`` is not a folder.
    """
    try:
        return scan_images(folder, recursive).files
    except NotADirectoryError as exc:
        raise RegistrationError(str(exc)) from exc


@dataclass
class DefectExamples:
    """Labelled defect examples: an anomaly signature per image, with its defect type."""

    types: list[str] = field(default_factory=list)
    signatures: np.ndarray | None = None  # (n, C) L2-normalised
    paths: list[str] = field(default_factory=list)
    min_similarity: float | None = None  # a type is named only above this (calibrated: ``defect_types``)

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
    """Everything the inspector knows about one product.

    ``image_hashes`` / ``image_added`` run parallel to ``bank.paths`` (content hash and date of
    each good image; ``None`` where a product stored before they were kept cannot tell).
    ``version`` is the stored version this object was loaded from or derives from; saving
    refuses to overwrite a version stored since (another registration's).
    """

    def __init__(self, name: str, bank: NormalBank, gate: GateParams, folder: Path | None = None,
                 defects: DefectExamples | None = None, priors: dict[str, str] | None = None,
                 max_side: int = DEFAULT_MAX_SIDE, image_size: tuple[int, int] | None = None,
                 tool_limits: ToolLimits | None = None) -> None:
        self.name = name
        self.image_size = tuple(image_size) if image_size else None  # (width, height) of the good images
        self.bank = bank
        self.gate = gate
        self.tool_limits = tool_limits or ToolLimits()  # each tool's normal level, set by calibration
        self.folder = folder
        self.defects = defects or DefectExamples()
        self.priors = priors or {}
        self.max_side = max_side
        self.image_hashes: list[str | None] = [None] * len(bank)
        self.image_added: list[str | None] = [None] * len(bank)
        self.defect_hashes: list[str | None] = [None] * len(self.defects.types)
        self.created: str | None = None
        self.updated: str | None = None
        self.version: str | None = None
        self.tool_readings: dict | None = None  # the tools' calibration readings (re-setting the fpr re-uses them)
        self.text_index: TextIndex | None = None  # embedded defect descriptions and evidence words (``defect_types``)
        self._extractor: FeatureExtractor | None = None
        self._images: OrderedDict[int, Image.Image] = OrderedDict()

    @property
    def extractor(self) -> FeatureExtractor:
        if self._extractor is None:
            from iad_agent.vision.features import FeatureExtractor

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
    def build(cls, name: str, normals: Sequence[str | Path], config: FeatureConfig | None = None, fpr: float | None = None,
              defects_dir: str | Path | None = None, priors: dict[str, str] | None = None, allow_mixed_sizes: bool = False,
              max_side: int = DEFAULT_MAX_SIDE, max_patches: int | None = None, progress: Callable[[int, int], None] | None = None,
              existing: Product | None = None, selfsim: bool = True, brightness: bool = True,
              clip: bool = True) -> Product:
        """Register good images (and optional defect examples) as a product: ``registration.register(...).product``."""
        from iad_agent.registration import register

        return register(name, normals, config, fpr, defects_dir, priors, allow_mixed_sizes, max_side, max_patches,
                        progress, existing, selfsim=selfsim, brightness=brightness, clip=clip).product

    def _copy(self) -> Product:
        """A copy that can be extended without changing this product (arrays are shared, never mutated)."""
        new = copy.copy(self)
        new.bank = copy.copy(self.bank)
        new.bank.paths = list(self.bank.paths)
        new.bank.calibration = copy.deepcopy(self.bank.calibration)
        new.gate = dataclasses.replace(self.gate)
        new.tool_limits = dataclasses.replace(self.tool_limits)
        new.defects = dataclasses.replace(self.defects, types=list(self.defects.types), paths=list(self.defects.paths))
        new.priors = dict(self.priors)
        new.image_hashes, new.image_added, new.defect_hashes = list(self.image_hashes), list(self.image_added), list(self.defect_hashes)
        new._images = OrderedDict(self._images)
        return new

    def _calibrate_gate(self, material: dict) -> None:
        """Set tool thresholds and texture-likeness from held-out good images.

        Args:
            material: the held-out good images (with their grids and heat maps) and synthetic
                defects that :func:`iad_agent.vision.learn.learn` made; with a single good
                image, its held-out images are augmented views of it.
        """
        from iad_agent.tools.calibration import calibrate_tools

        cal = self.bank.calibration
        ratio = float(np.median(cal.knn_scores or cal.global_scores) / max(np.median(cal.aligned_scores), 1e-8))
        # Aligned parts: the nearest patch anywhere is hardly closer than the one in place.
        self.gate.aligned_informative = ratio > 0.6
        view = None if len(self.bank) > 1 else np.asarray(material["grids"][0], np.float32)  # an augmented view
        self.gate.texture = texture_likeness(self.bank, view) < 0.8
        self.tool_readings = calibrate_tools(self, material)

    def add_defect_examples(self, folder: str | Path, allow_mixed_sizes: bool = True) -> int:
        """Register labelled defect examples ``folder/<defect_type>/*.png``: see ``registration.add_defect_examples``."""
        from iad_agent.registration import add_defect_examples

        return add_defect_examples(self, folder, allow_mixed_sizes)

    # ------------------------------------------------- threshold and removal
    def limits(self) -> dict[str, float]:
        """The calibrated decision limits: the threshold and each tool's normal limit."""
        out = {}
        if self.bank.calibration is not None:
            cal = self.bank.calibration
            out.update(threshold=float(cal.threshold), aligned_threshold=float(cal.aligned_threshold),
                       patch_threshold=float(cal.patch_threshold))
        out.update(self.tool_limits.to_dict())
        return out

    def set_fpr(self, fpr: float) -> dict[str, tuple[float | None, float]]:
        """Re-set the threshold and tool limits for ``fpr`` from the stored scores: see ``registration.set_fpr``."""
        from iad_agent.registration import set_fpr

        return set_fpr(self, fpr)

    def without_images(self, paths: Sequence[str | Path], progress: Callable[[int, int], None] | None = None) -> Registration:
        """A copy without the good images registered under ``paths``: see ``registration.remove_images``."""
        from iad_agent.registration import remove_images

        return remove_images(self, paths, progress)

    # ------------------------------------------------------------ persistence
    def save(self, folder: str | Path, replace: bool = False, on_wait: Callable[[str], None] | None = None) -> Path:
        """Store the product as a new version of ``folder`` (atomic; see ``iad_agent.store``).

        Args:
            replace: overwrite whatever is stored there. Without it, saving refuses
                (``ConcurrentRegistration``) when the stored version is not the one this product
                was loaded from or built on: another registration stored its work meanwhile.
            on_wait: called with the lock holder's description when another registration of
                this product is being stored.

        Returns:
            The new version's folder.
        """
        from iad_agent import store
        from iad_agent.product_files import OWN_FILES, write_product
        from iad_agent.registration import check_limits, now_iso

        pointer = Path(folder)
        check_limits(self)
        try:
            pointer.parent.mkdir(parents=True, exist_ok=True)
            with store.lock(pointer, on_wait):
                same_place = self.folder is not None and Path(self.folder).absolute() == pointer.absolute()
                expected = False if replace else (self.version if same_place else None)
                self.updated = now_iso()
                self.created = self.created or self.updated
                new = store.commit(pointer, lambda tmp: write_product(self, tmp), expected,
                                   carry=lambda name: name not in OWN_FILES)
        except store.ConcurrentChange as exc:
            raise ConcurrentRegistration(
                f"product {self.name!r} in {pointer.parent} was changed by another registration while this one ran "
                f"(expected {exc.expected or 'no product'}, found {exc.found or 'none'}); nothing was overwritten: "
                "run the registration again to add to the current version") from exc
        except (OSError, store.StoreError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            raise WorkspaceError(f"{pointer}: cannot store product {self.name!r} ({reason}); "
                                 "the previously stored version is kept") from exc
        self.folder, self.version = pointer, new.name
        return new

    @classmethod
    def load(cls, folder: str | Path) -> Product:
        """Load the current version of the product stored at ``folder``, validating every file.

        Raises:
            ProductNotFound: nothing is stored there.
            DamagedProduct: a file is missing, truncated or of the wrong type (the message
                names it and says how to repair).
        """
        from iad_agent.product_files import read_product

        return read_product(Path(folder))


def _load_all(paths: Sequence[Path], allow_mixed_sizes: bool, max_side: int, reference_size: tuple[int, int] | None = None) -> list[Image.Image]:
    """Every image of ``paths``, checked (see :func:`iter_checked`)."""
    return [img for _, img in iter_checked(paths, allow_mixed_sizes, max_side, reference_size)]


def iter_checked(paths: Sequence[Path], allow_mixed_sizes: bool, max_side: int, reference_size: tuple[int, int] | None = None):
    """``(path, image)`` of each usable image in turn, one decoded at a time.

    Raises:
        RegistrationError: at the end, naming every unreadable file and every image whose size
            differs from the first (or ``reference_size``) unless ``allow_mixed_sizes``.
    """
    problems, size = [], reference_size
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
        yield p, img
    if problems:
        raise RegistrationError("cannot register; fix or remove these files:\n  " + "\n  ".join(problems))


ASPECT_TOLERANCE = 0.05


def same_shape(size: tuple[int, int], other: tuple[int, int], tolerance: float = ASPECT_TOLERANCE) -> bool:
    """Whether two ``(width, height)`` sizes have the same aspect ratio (within ``tolerance``).

    >>> same_shape((1024, 1024), (256, 256)), same_shape((529, 317), (123, 286))
    (True, False)
    """
    a, b = size[0] / max(size[1], 1), other[0] / max(other[1], 1)
    return abs(math.log(a / b)) <= math.log1p(tolerance)


def augmented_views(img: Image.Image, n: int = 8, seed: int = 0) -> list[Image.Image]:
    """Shifted, rotated and re-lit views of a good image: see ``iad_agent.vision.learn.augmented_views``."""
    from iad_agent.vision.learn import augmented_views as views

    return views(img, n, seed)


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
    flat_sq, sub_sq = (flat**2).sum(1), (sub**2).sum(1)[None]
    yy, xx = np.divmod(np.arange(h * w), w)
    best = np.empty(h * w, dtype=np.float32)
    for start in range(0, h * w, 1024):  # in row chunks: a 128x128 grid's whole matrix and masks took 800 MB
        rows = slice(start, min(start + 1024, h * w))
        d = np.sqrt(np.maximum(flat_sq[rows, None] - 2 * flat[rows] @ sub.T + sub_sq, 0))
        near = (np.abs(yy[rows, None] - yy[None, ::3]) <= 2) & (np.abs(xx[rows, None] - xx[None, ::3]) <= 2)
        d[near] = np.inf
        best[rows] = d.min(axis=1)
    within = float(np.quantile(best, 0.9))
    across_map = bank.patch_distances(grid, exclude=0) if len(bank) > 1 else bank.patch_distances(held_out)
    across = float(np.quantile(across_map, 0.9))
    return within / max(across, 1e-8)


def __getattr__(name: str):
    if name == "Workspace":  # moved to iad_agent.workspace; kept importable from here
        from iad_agent.workspace import Workspace

        return Workspace
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

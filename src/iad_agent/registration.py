"""Registration bookkeeping: adding good images without duplicates, re-setting the false-alarm
rate from stored scores, removing good images, and refusing limits a tool cannot divide by.

Every function here returns a new or changed :class:`~iad_agent.product.Product` and a
:class:`Registration` saying what happened; nothing is printed and nothing is stored (that is
``Product.save`` / ``Workspace``), so the CLI, the library API and the service render the same
facts their own way.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from iad_agent import defect_types
from iad_agent.imageio import DEFAULT_MAX_SIDE, ImageError, content_hash, load_image
from iad_agent.product import (
    DEFAULT_FPR,
    DefectExamples,
    GateParams,
    Product,
    RegistrationError,
    _load_all,
    anomaly_signature,
    check_name,
    iter_checked,
    list_images,
    same_shape,
)

if TYPE_CHECKING:
    from iad_agent.vision.features import FeatureConfig, FeatureExtractor

log = logging.getLogger(__name__)


def now_iso() -> str:
    """The current time, UTC, to the second (ISO 8601)."""
    return datetime.now(timezone.utc).replace(microsecond=0).isoformat()


#: Decoded good images kept in memory from their check until their features are extracted, in bytes.
#: Beyond it an image is decoded again from its file when its turn comes: registration's memory
#: stays bounded however many photos are given (200 of 4000x3000 would otherwise hold 7 GB), at the
#: cost of a second decoding of those images. 200 good images of 1024x1024 (600 MB) are all kept.
KEEP_DECODED_BYTES = 768 * 2**20


@dataclass
class _Good:
    """A given good image, checked: what registration needs of it, and its pixels while the budget lasts."""

    path: Path
    size: tuple[int, int]
    hash: str
    image: Image.Image | None  # None: decoded again from ``path`` when its features are extracted
    luminance: tuple[float, float] | None = None

    def load(self, max_side: int) -> Image.Image:
        if self.image is not None:
            return self.image
        try:
            return load_image(self.path, max_side)
        except ImageError as exc:
            raise RegistrationError(f"cannot register: {exc} (it changed while the good images were read)") from exc


def _read_good(paths: Sequence[Path], allow_mixed_sizes: bool, max_side: int, reference_size: tuple[int, int] | None,
               luminance: bool, keep_bytes: int) -> list[_Good]:
    """Decode and check every given good image once (all problems named together: :func:`iter_checked`),
    keeping the pixels of the first ones up to ``keep_bytes``; ``luminance``: also their luminance statistics."""
    from iad_agent.vision.brightness import luminance_stats

    goods, kept = [], 0
    for p, img in iter_checked(paths, allow_mixed_sizes, max_side, reference_size):
        nbytes = img.width * img.height * len(img.getbands())
        keep = kept + nbytes <= keep_bytes
        kept += nbytes if keep else 0
        goods.append(_Good(p, img.size, content_hash(img), img if keep else None,
                           luminance_stats(img) if luminance else None))
    return goods


@dataclass
class Skipped:
    """A given image that was not registered, and why."""

    path: str
    reason: str
    same_as: str | None = None  # the registered (or earlier given) image with the same content


@dataclass
class Registration:
    """What a registration (or a removal, or a new false-alarm rate) did.

    Attributes:
        changed: False when there was nothing to store (a no-op: every image already there).
        added / removed: good images added / removed (paths as given / as registered).
        skipped: given images not registered (already registered, or given twice).
        limits: ``{limit: (before, after)}`` of the threshold and tool limits that changed
            (``before`` is None for a new product).
        warnings: things the user should know (e.g. images in subfolders left out).
        folder: the stored version, once saved.
        waited_for: the other registration this one waited for (its lock holder), if any.
    """

    product: Product
    created: bool = False
    changed: bool = False
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    defects_added: int = 0
    limits: dict[str, tuple[float | None, float]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    folder: Path | None = None
    waited_for: str | None = None


def few_good_images(n: int) -> str:
    """The warning of a product with too few good images to measure how much good parts vary."""
    from iad_agent.vision.learn import MIN_SPREAD_SCORES

    how = "augmented views of it" if n == 1 else "their leave-one-out scores with an assumed spread"
    return (f"{n} good image{'' if n == 1 else 's'}: the threshold comes from {how}, so its false-alarm rate is an "
            f"estimate, not a measurement; on parts that vary a lot it ran far above the promise (unseen ELPV solar "
            f"cells: 0.31 with 4 good images, up to 0.54 with 1). Register {MIN_SPREAD_SCORES} or more good images to "
            "measure it.")


def register(
    name: str,
    normals: Sequence[str | Path],
    config: FeatureConfig | None = None,
    fpr: float | None = None,
    defects_dir: str | Path | None = None,
    priors: dict[str, str] | None = None,
    allow_mixed_sizes: bool = False,
    max_side: int = DEFAULT_MAX_SIDE,
    max_patches: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    existing: Product | None = None,
    selfsim: bool = True,
    brightness: bool = True,
    clip: bool = True,
) -> Registration:
    """Register good images (and optional defect examples) as a new product or onto ``existing``.

    ``existing`` is never modified. Images whose content is already registered, or given
    twice, are skipped and listed in ``skipped``. With no new image and no defect examples,
    nothing is extracted: a different ``fpr`` re-sets the threshold and tool limits from the
    stored calibration scores, new priors are merged, and with nothing to change at all the
    result has ``changed`` False.

    Args:
        fpr: false-alarm rate of the threshold; ``None`` keeps the stored one (new products:
            0.05).
        progress: ``progress(done, total)`` while features are extracted and synthetic
            defects are scored.
        selfsim: whether the product's scoring may mix in self-similarity (``False``: plain
            nearest neighbour). What the product learns from its good images (that weight, its
            calibration) is set here (:mod:`iad_agent.vision.learn`) and saved with it.
        brightness: whether a new product may match every image to its good images' brightness
            when their light varies (:mod:`iad_agent.vision.brightness`); ``False``: never.
        clip: whether a new product caps the length of its patch vectors at the
            ``CLIP_QUANTILE`` quantile of its good images' (``FeatureConfig.clip_length``);
            ``False``: never (the ``embedded-no-clip`` ablation of ``iad eval``).

    Raises:
        RegistrationError: no images, an unreadable image, an image whose size differs from
            the others (unless ``allow_mixed_sizes``), ``fpr`` out of range, or a calibration
            that would store a zero or non-finite limit.
    """
    check_name(name)
    if fpr is not None and not 0 < fpr < 1:
        raise RegistrationError(f"--fpr must be between 0 and 1 (exclusive), got {fpr}")
    paths = [Path(p) for p in normals]
    if not paths and existing is None:
        raise RegistrationError("no good images given: a product needs at least one good image")
    goods = _read_good(paths, allow_mixed_sizes, max_side, existing.image_size if existing else None,
                       luminance=existing is None and brightness, keep_bytes=KEEP_DECODED_BYTES)
    product = existing._copy() if existing is not None else None
    reg = Registration(product)  # type: ignore[arg-type]  (a new product is set below)
    goods = _drop_known(product, goods, reg)
    paths, hashes = [g.path for g in goods], [g.hash for g in goods]
    if product is not None and not goods and defects_dir is None:  # nothing to extract
        if priors and any(product.priors.get(k) != v for k, v in priors.items()):
            product.priors.update(priors)
            defect_types.refresh(product)
            reg.changed = True
        if fpr is not None and fpr != product.bank.calibration.fpr:
            reg.limits = set_fpr(product, fpr)
            reg.changed = True
        return reg
    if product is None:
        from iad_agent.vision.features import FeatureConfig, FeatureExtractor
        from iad_agent.vision.normal_bank import NormalBank

        config = config or FeatureConfig()
        if config.keep_aspect and not config.reference_side and len({g.size for g in goods}) > 1:
            # good images of mixed sizes (crops): one scale for all, so a defect keeps its size in patches
            config = dataclasses.replace(config, reference_side=int(np.median([min(g.size) for g in goods])))
        if brightness and config.brightness is None:
            from iad_agent.vision.brightness import target_from_stats

            config = dataclasses.replace(config, brightness=target_from_stats([g.luminance for g in goods]))
        extractor = FeatureExtractor(config)
        product = Product(name, NormalBank(extractor.config, max_patches=max_patches), GateParams(), max_side=max_side)
        product._extractor = extractor
        product.created = now_iso()
        reg.product, reg.created = product, True
    extractor = product.extractor
    before = product.limits()
    from iad_agent.vision.learn import MIN_SPREAD_SCORES, N_SYNTHETIC, learn
    from iad_agent.vision.tool_weights import fit_tool_weights

    n_new = len(goods)
    total = n_new + (N_SYNTHETIC if goods else 0)
    grids: list[np.ndarray] = []
    batch: list[Image.Image] = []
    for i in range(0, n_new, extractor.batch_size):
        batch = [g.load(product.max_side) for g in goods[i : i + extractor.batch_size]]
        grids.extend(g.astype(np.float16) for g in extractor(batch))  # as the bank stores them
        if progress:
            progress(min(i + extractor.batch_size, n_new), total)
    del batch
    if reg.created and clip and grids and not product.bank.config.clip_length:
        extractor = _cap_lengths(product, grids)
    # free the decoded images before the coreset (200 MB for 200 mixed good images, 600 MB for 200 of
    # 1024x1024; with them alive the coreset was registration's memory peak): calibration reads the
    # last 16 back from the product's cache (those still decoded), the others from their files
    sizes, last = [g.size for g in goods], [g.image for g in goods[-16:]]
    del goods
    if grids:
        product.bank.add(grids, [str(p.resolve()) for p in paths])
        product.image_hashes += hashes
        product.image_added += [now_iso()] * len(paths)
        reg.added = [str(p) for p in paths]
        product.image_size = product.image_size or sizes[0]
        if any(not same_shape(size, product.image_size) for size in sizes):
            product.gate.mixed_geometry = True
        for offset, img in enumerate(last):  # warm the cache: calibration reads these back
            if img is not None:
                product._images[len(product.bank) - len(last) + offset] = img
    del grids, last  # the bank holds them now
    if priors:
        product.priors.update(priors)
    stored_fpr = product.bank.calibration.fpr if product.bank.calibration else DEFAULT_FPR
    if n_new:
        step = (lambda done, n: progress(n_new + done, total)) if progress else None
        material: dict = {}  # held-out and synthetic images, reused to learn the tool weights
        product.bank.scoring, product.bank.calibration = learn(
            product.bank, extractor, product.reference_image, stored_fpr if fpr is None else fpr,
            selfsim=selfsim, progress=step, material=material)
        product._calibrate_gate(material)
        fit_tool_weights(product, material)
        if len(product.bank) < MIN_SPREAD_SCORES:
            reg.warnings.append(few_good_images(len(product.bank)))
    elif fpr is not None and fpr != stored_fpr:
        set_fpr(product, fpr)
    if defects_dir is not None:
        reg.defects_added = add_defect_examples(product, defects_dir, allow_mixed_sizes)
    defect_types.refresh(product)  # the limits that name a defect type (or say "unknown")
    check_limits(product)
    reg.limits = _changes(before, product.limits())
    reg.changed = bool(reg.created or reg.added or reg.defects_added or reg.limits
                       or (existing is not None and product.priors != existing.priors))
    return reg


def _cap_lengths(product: Product, grids: list[np.ndarray]) -> FeatureExtractor:
    """Set a new product's patch-length cap from its good grids and cap them (in place, float16 as stored).

    The same backbone is kept (nothing is loaded twice); the product's extractor and its bank's
    config carry the cap from here on, so every later grid (calibration, tools, inspection) is capped.
    """
    from iad_agent.vision.features import FeatureExtractor, clip_length_of, clip_lengths

    old = product.extractor
    length = clip_length_of(grids)
    if not length:
        return old
    config = dataclasses.replace(old.config, clip_length=length)
    product.bank.config = config
    product._extractor = FeatureExtractor(config, old.batch_size, backbone=old.backbone)
    for i, g in enumerate(grids):
        grids[i] = clip_lengths(g, length).astype(np.float16)
    return product._extractor


def _drop_known(product: Product | None, goods: list[_Good], reg: Registration) -> list[_Good]:
    """Drop the given images whose content is registered already, or given twice; record them in ``reg``.

    A product stored before content hashes were kept gets them now, from the files still there.
    """
    known: dict[str, str] = {}
    registered_paths: set[str] = set()
    if product is not None:
        if goods and any(h is None for h in product.image_hashes):
            for i, (p, h) in enumerate(zip(product.bank.paths, product.image_hashes)):
                if h is None:
                    try:
                        product.image_hashes[i] = content_hash(load_image(p, product.max_side))
                    except ImageError:
                        log.info("%s: registered good image no longer readable; not used to find duplicates", p)
        known = {h: p for h, p in zip(product.image_hashes, product.bank.paths) if h}
        registered_paths = set(product.bank.paths)
    keep = []
    for g in goods:
        where = str(g.path.resolve())
        if g.hash in known:
            same = known[g.hash]
            reason = "already registered" if same == where else "same content as a registered image"
            reg.skipped.append(Skipped(str(g.path), reason, same))
            continue
        if where in registered_paths:
            reg.warnings.append(f"{g.path} was registered before with different content (the file changed); "
                                "its new content is registered as another good image")
        known[g.hash] = where
        keep.append(g)
    return keep


def check_defects_dir(folder: str | Path) -> dict[str, list[Path]]:
    """The labelled defect examples of ``folder/<defect type>/*.png``, checked before any work starts.

    Returns:
        ``{defect type: image files}``, types sorted.

    Raises:
        RegistrationError: ``folder`` is not a folder, has no defect-type subfolders (images
            lying directly in it are named), or a subfolder holds no images.
    """
    folder = Path(folder)
    layout = f"expected one subfolder of example images per defect type, e.g. {folder / 'crack' / '000.png'}"
    if not folder.is_dir():
        raise RegistrationError(f"{folder}: not a folder; {layout}")
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not subdirs:
        loose = list_images(folder)
        found = f" (found {len(loose)} image{'s' * (len(loose) != 1)} directly in it, e.g. {loose[0].name})" if loose else ""
        raise RegistrationError(f"{folder}: no defect-type subfolders{found}; {layout}")
    examples = {}
    for sub in subdirs:
        files = list_images(sub)
        if not files:
            raise RegistrationError(f"{sub}: defect type folder has no images; {layout}")
        examples[sub.name] = files
    return examples


def add_defect_examples(product: Product, folder: str | Path, allow_mixed_sizes: bool = True) -> int:
    """Register labelled defect examples ``folder/<defect_type>/*.png`` into ``product``, in place.

    Examples whose content is already registered are skipped (a product stored before hashes
    were kept gets them from the example files still there). Returns how many were added.

    Raises:
        RegistrationError: ``folder`` has no defect-type subfolders, or one has no images.
    """
    examples = check_defects_dir(folder)
    types, paths, hashes = list(product.defects.types), list(product.defects.paths), list(product.defect_hashes)
    for i, (p, h) in enumerate(zip(paths, hashes)):
        if h is None:
            try:
                hashes[i] = content_hash(load_image(p, product.max_side))
            except ImageError:
                pass
    known, sigs = {h for h in hashes if h}, []
    for defect_type, files in examples.items():
        keep = []
        for f, img in zip(files, _load_all(files, True, product.max_side)):
            h = content_hash(img)
            if h not in known:
                known.add(h)
                keep.append((f, img, h))
        if not keep:
            continue
        for (f, _, h), grid in zip(keep, product.extractor([img for _, img, _ in keep])):
            sigs.append(anomaly_signature(grid, product.bank.patch_distances(grid)))
            types.append(defect_type)
            paths.append(str(f.resolve()))
            hashes.append(h)
    if sigs:
        old, new = product.defects.signatures, np.stack(sigs)
        product.defects = DefectExamples(types, new if old is None else np.concatenate([old, new]), paths)
    product.defect_hashes = hashes
    return len(sigs)


def set_fpr(product: Product, fpr: float) -> dict[str, tuple[float | None, float]]:
    """Re-set the threshold and tool limits of ``product`` for false-alarm rate ``fpr``, in place.

    Nothing is extracted or re-read: the threshold comes from the stored held-out scores; the
    zoom and comparison limits are defined relative to the nearest-neighbour threshold
    (``tools.calibration``) and scale with it; the high-frequency limit is re-derived from the tools' stored readings
    when the product has them, else kept.

    Returns:
        ``{limit: (before, after)}`` of what changed.

    Raises:
        RegistrationError: ``fpr`` out of range, or a limit that would be zero or non-finite
            (the product is then left as it was).
    """
    if not 0 < fpr < 1:
        raise RegistrationError(f"--fpr must be between 0 and 1 (exclusive), got {fpr}")
    cal = product.bank.calibration
    before, old_fpr = product.limits(), cal.fpr
    limits_before = replace(product.tool_limits)
    old_threshold = cal.knn_threshold  # the tool limits are relative to the nearest-neighbour threshold
    cal.fpr = fpr
    scale = cal.knn_threshold / old_threshold if old_threshold > 0 else math.nan
    limits = product.tool_limits
    limits.zoom_threshold *= scale
    limits.compare_threshold *= scale
    readings = (product.tool_readings or {}).get("highfreq")
    if readings:
        from iad_agent.vision.normal_bank import threshold_for_fpr

        limits.highfreq_threshold = threshold_for_fpr(readings, fpr)
    try:
        check_limits(product)
    except RegistrationError:
        cal.fpr = old_fpr
        product.tool_limits = limits_before
        raise
    return _changes(before, product.limits())


def remove_images(product: Product, paths: Sequence[str | Path], progress: Callable[[int, int], None] | None = None
                  ) -> Registration:
    """A copy of ``product`` without the good images registered under ``paths``.

    The coreset and the held-out scores are rebuilt from the stored feature grids and the
    product recalibrated at its stored false-alarm rate; the tools' calibration reads a few of
    the remaining good images back from their paths (and zooms into them, as at registration).

    Raises:
        RegistrationError: a path that is not registered, removing every good image, or a
            remaining good image that calibration needs and cannot read.
    """
    from iad_agent.vision.normal_bank import NormalBank

    old = product.bank
    registered = {p: i for i, p in enumerate(old.paths)}
    drop, unknown = set(), []
    for p in paths:
        i = registered.get(str(Path(p).expanduser().resolve()), registered.get(str(p)))
        if i is None:
            unknown.append(str(p))
        else:
            drop.add(i)
    if unknown:
        raise RegistrationError(f"not registered as good images of {product.name!r}: " + ", ".join(unknown)
                                + f" (`iad products --json` lists its {len(old)} good images)")
    keep = [i for i in range(len(old)) if i not in drop]
    if not keep:
        raise RegistrationError(f"cannot remove every good image of {product.name!r}: a product needs at least one "
                                f"(to delete the product: `iad products rm {product.name}`)")
    new = product._copy()
    new.bank = NormalBank(old.config, max_patches=old.max_patches, seed=old.seed)
    new.bank.add([old.grids[i] for i in keep], [old.paths[i] for i in keep])
    new.image_hashes = [product.image_hashes[i] for i in keep]
    new.image_added = [product.image_added[i] for i in keep]
    new._images = OrderedDict()
    if progress:
        progress(1, 2)
    fpr = old.calibration.fpr if old.calibration else DEFAULT_FPR
    try:
        from iad_agent.vision.learn import learn
        from iad_agent.vision.tool_weights import fit_tool_weights

        material: dict = {}
        new.bank.scoring, new.bank.calibration = learn(new.bank, new.extractor, new.reference_image, fpr,
                                                       selfsim=old.scoring.uses_self or bool(old.scoring.synthetic_auroc),
                                                       material=material)
        new._calibrate_gate(material)
        fit_tool_weights(new, material)
    except ImageError as exc:
        raise RegistrationError(f"cannot recalibrate {product.name!r} without those images: a remaining good image "
                                f"cannot be read ({exc})") from exc
    defect_types.refresh(new)
    check_limits(new)
    if progress:
        progress(2, 2)
    return Registration(new, changed=True, removed=[old.paths[i] for i in sorted(drop)],
                        limits=_changes(product.limits(), new.limits()))


def check_limits(product: Product) -> None:
    """Refuse a calibration that would store a zero, negative or non-finite limit.

    A zero limit means the held-out good parts matched the others exactly (identical images:
    the same picture registered twice, or a frozen camera): the calibration measured nothing,
    and a stand-in number would make the stated false-alarm rate untrue. So registration stops
    and says why, instead of storing a limit that tools would divide by.

    Raises:
        RegistrationError: naming each bad limit.
    """
    bad = {k: v for k, v in product.limits().items() if not (math.isfinite(v) and v > 0)}
    if bad:
        listed = ", ".join(f"{k} = {v:g}" for k, v in bad.items())
        raise RegistrationError(
            f"calibration of {product.name!r} failed: {listed} (limits must be positive and finite). The held-out "
            "good images scored zero against the others, which happens when good images are copies of each other; "
            "register distinct good images. Nothing was stored.")


def _changes(before: dict[str, float], after: dict[str, float]) -> dict[str, tuple[float | None, float]]:
    return {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}

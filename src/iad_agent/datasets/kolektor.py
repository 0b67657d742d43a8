"""Reader for KolektorSDD (Tabernik et al. 2019) and KolektorSDD2 (Božič et al. 2021): commutator surfaces.

Layouts::

    <root>/kosNN/PartK.jpg           KolektorSDD: image
    <root>/kosNN/PartK_label.bmp     pixel label (nonzero = crack)

    <root>/train/10000.png           KolektorSDD2: image
    <root>/train/10000_GT.png        pixel label; the same under <root>/test/

An image is anomalous (``defect_type="crack"``) when its label has any pixel above 127 (read
with :func:`iad_agent.imageio.load_mask`, which decodes it); defect-free images get
``mask_path=None``. ``category="kolektor"``. KolektorSDD has no split (``split="test"``
everywhere: the benchmark holds out a pool of its good images as references); KolektorSDD2's
``train`` and ``test`` folders are its splits (the good images of ``train`` are the references).
"""

from __future__ import annotations

from pathlib import Path

from iad_agent.datasets._common import DatasetError, check_split, list_dirs, list_images, require_dir, size_of
from iad_agent.imageio import ImageError, load_mask
from iad_agent.types import ANOMALOUS, NORMAL, Sample

CATEGORY = "kolektor"
LABEL_SUFFIX = "_label"
#: Label file suffixes: KolektorSDD's ``_label``, KolektorSDD2's ``_GT``.
LABEL_SUFFIXES = (LABEL_SUFFIX, "_GT")
#: Folders that are KolektorSDD2's splits rather than KolektorSDD's ``kosNN`` parts.
SPLITS = ("train", "test")


def _label_stem(path: Path) -> str | None:
    """The image stem a label file belongs to (None: not a label file)."""
    for suffix in LABEL_SUFFIXES:
        if path.stem.endswith(suffix):
            return path.stem[: -len(suffix)]
    return None


def read_kolektor(root: str | Path, category: str | None = None, split: str | None = None) -> list[Sample]:
    """Read every KolektorSDD or KolektorSDD2 image with its label.

    Args:
        root: the folder holding the ``kosNN`` folders (KolektorSDD) or ``train`` and ``test``
            (KolektorSDD2).
        category: ``None`` or ``"kolektor"`` (the only category).
        split: ``None``, ``"train"`` (KolektorSDD2 only) or ``"test"``.

    Returns:
        Samples sorted by path, ``dataset="kolektor"``.

    Raises:
        DatasetError: no image found, an image without its ``_label`` / ``_GT`` file, a label without
            its image, an unreadable label or one of the wrong size.
    """
    if category not in (None, CATEGORY):
        raise DatasetError(f"kolektor has the single category {CATEGORY!r}, got {category!r}")
    check_split(split, SPLITS, CATEGORY)
    root = require_dir(Path(root), "dataset")
    samples = []
    for part_dir in list_dirs(root):
        part_split = part_dir.name if part_dir.name in SPLITS else "test"
        if split is not None and part_split != split:
            continue
        files = list_images(part_dir)
        labels = {_label_stem(p): p for p in files if _label_stem(p) is not None}
        for image in [p for p in files if _label_stem(p) is None]:
            label_path = labels.pop(image.stem, None)
            if label_path is None:
                raise DatasetError(f"{image}: image has no label file ({image.stem}{LABEL_SUFFIX}.bmp or "
                                   f"{image.stem}_GT.png) in {part_dir}")
            try:
                mask = load_mask(label_path)
            except ImageError as exc:
                raise DatasetError(str(exc)) from exc
            width, height = size_of(image)
            if mask.shape != (height, width):
                raise DatasetError(
                    f"{label_path}: label is {mask.shape[1]}x{mask.shape[0]} but its image {image} is {width}x{height}"
                )
            anomalous = bool(mask.any())
            samples.append(
                Sample(
                    image_path=image,
                    category=CATEGORY,
                    label=ANOMALOUS if anomalous else NORMAL,
                    defect_type="crack" if anomalous else None,
                    mask_path=label_path if anomalous else None,
                    dataset="kolektor",
                    split=part_split,
                )
            )
        if labels:
            orphan = min(labels.values())
            raise DatasetError(f"{orphan}: label without image in {part_dir}")
    if not samples and split in (None, "test"):
        raise DatasetError(f"{root}: no kosNN/PartK.jpg (KolektorSDD) or train|test/NNNNN.png (KolektorSDD2) images found")
    return sorted(samples, key=lambda s: str(s.image_path))

"""Reader for KolektorSDD (Tabernik et al. 2019), electrical commutator surfaces.

Layout::

    <root>/kosNN/PartK.jpg           image
    <root>/kosNN/PartK_label.bmp     pixel label (nonzero = crack)

An image is anomalous (``defect_type="crack"``) when its label has any pixel above 127 (read
with :func:`iad_agent.imageio.load_mask`, which decodes it); defect-free images get
``mask_path=None``. The dataset is used for evaluation only: ``split="test"`` everywhere and
``category="kolektor"``.
"""

from __future__ import annotations

from pathlib import Path

from iad_agent.datasets._common import DatasetError, check_split, list_dirs, list_images, require_dir, size_of
from iad_agent.imageio import ImageError, load_mask
from iad_agent.types import ANOMALOUS, NORMAL, Sample

CATEGORY = "kolektor"
LABEL_SUFFIX = "_label"


def read_kolektor(root: str | Path, category: str | None = None, split: str | None = None) -> list[Sample]:
    """Read every KolektorSDD image with its label.

    Args:
        root: the folder holding the ``kosNN`` folders.
        category: ``None`` or ``"kolektor"`` (the only category).
        split: ``None`` or ``"test"`` (the only split).

    Returns:
        Samples sorted by path, ``dataset="kolektor"``.

    Raises:
        DatasetError: no image found, an image without its ``_label`` file, a label without
            its image, an unreadable label or one of the wrong size.
    """
    if category not in (None, CATEGORY):
        raise DatasetError(f"kolektor has the single category {CATEGORY!r}, got {category!r}")
    check_split(split, ("test",), CATEGORY)
    root = require_dir(Path(root), "dataset")
    samples = []
    for part_dir in list_dirs(root):
        files = list_images(part_dir)
        labels = {p.stem[: -len(LABEL_SUFFIX)]: p for p in files if p.stem.endswith(LABEL_SUFFIX)}
        for image in [p for p in files if not p.stem.endswith(LABEL_SUFFIX)]:
            label_path = labels.pop(image.stem, None)
            if label_path is None:
                raise DatasetError(f"{image}: image has no label file {image.stem}{LABEL_SUFFIX}.bmp in {part_dir}")
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
                    split="test",
                )
            )
        if labels:
            orphan = min(labels.values())
            raise DatasetError(f"{orphan}: label without image in {part_dir}")
    if not samples:
        raise DatasetError(f"{root}: no kosNN/PartK.jpg images found")
    return sorted(samples, key=lambda s: str(s.image_path))

"""Reader for the Magnetic Tile Defect dataset (Huang et al. 2020) in its native layout.

Layout::

    <root>/MT_<Class>/Imgs/<id>.jpg     grayscale image
    <root>/MT_<Class>/Imgs/<id>.png     mask, same size (soft edges; threshold at 128)

``MT_Free`` holds the defect-free images (label 0, ``mask_path=None``: its masks are all
zero and need not be present). Every other class is anomalous with ``defect_type`` the class
name lower-cased without ``MT_`` (``blowhole``, ``break``, ``crack``, ``fray``, ``uneven``).
The dataset has no train split: every sample has ``split="test"`` and ``category
"magnetic_tile"``; evaluation draws its normal references from the normal images.
"""

from __future__ import annotations

from pathlib import Path

from iad_agent.datasets._common import DatasetError, check_mask_size, check_split, list_dirs, list_images, require_dir
from iad_agent.types import ANOMALOUS, NORMAL, Sample

CATEGORY = "magnetic_tile"
FREE = "MT_Free"


def read_magnetic_tile(root: str | Path, category: str | None = None, split: str | None = None) -> list[Sample]:
    """Read every image of the Magnetic Tile Defect dataset.

    Args:
        root: the folder holding the ``MT_*`` class folders.
        category: ``None`` or ``"magnetic_tile"`` (the only category).
        split: ``None`` or ``"test"`` (the only split).

    Returns:
        Samples sorted by path, ``dataset="magnetic_tile"``.

    Raises:
        DatasetError: no ``MT_*`` folder, a class without ``Imgs/``, a defect image without
            its ``.png`` mask, a mask without its image, or a mask of the wrong size.
    """
    _check_category(category)
    check_split(split, ("test",), CATEGORY)
    root = require_dir(Path(root), "dataset")
    classes = [d for d in list_dirs(root) if d.name.startswith("MT_")]
    if not classes:
        raise DatasetError(f"{root}: no MT_<class> folders (expected e.g. {root / 'MT_Blowhole' / 'Imgs'})")
    samples = []
    for class_dir in classes:
        imgs = require_dir(class_dir / "Imgs", "Imgs")
        files = list_images(imgs)
        masks = {p.stem: p for p in files if p.suffix.lower() == ".png"}
        images = [p for p in files if p.suffix.lower() != ".png"]
        free = class_dir.name == FREE
        for image in images:
            mask = masks.pop(image.stem, None)
            if mask is None and not free:
                raise DatasetError(f"{image}: image has no mask {image.with_suffix('.png').name} in {imgs}")
            if mask is not None:
                check_mask_size(image, mask)
            samples.append(
                Sample(
                    image_path=image,
                    category=CATEGORY,
                    label=NORMAL if free else ANOMALOUS,
                    defect_type=None if free else class_dir.name[3:].lower(),
                    mask_path=None if free else mask,
                    dataset="magnetic_tile",
                    split="test",
                )
            )
        if masks:
            orphan = min(masks.values())
            raise DatasetError(f"{orphan}: mask without image (no {orphan.stem}.jpg in {imgs})")
    return sorted(samples, key=lambda s: str(s.image_path))


def _check_category(category: str | None) -> None:
    if category not in (None, CATEGORY):
        raise DatasetError(f"magnetic_tile has the single category {CATEGORY!r}, got {category!r}")

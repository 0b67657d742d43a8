"""Reader for a plain folder of labelled images: any product in no benchmark's layout.

Layout (like anomalib's ``Folder`` data: one folder of good images, one per defect type)::

    <root>/<category>/good/*.png                      defect-free images (also ``ok`` or ``normal``)
    <root>/<category>/<defect>/*.png                  defective images, one folder per defect type
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   optional masks (or ``<stem>.png``;
                                                      the folder may also be called ``masks``)

``<root>`` may itself be the category (it holds ``good/``); the category is then the folder's
name. There is no train split: every sample has ``split="test"`` and evaluation takes a pool of
good images as references and never tests them, as for Magnetic Tile. A category with a
``train/`` folder is in the MVTec AD layout and is refused with a pointer to ``--dataset mvtec``.
"""

from __future__ import annotations

from pathlib import Path

from iad_agent.datasets._common import DatasetError, check_split, list_dirs, list_images, require_dir, unknown_category
from iad_agent.datasets.mvtec import pair_masks
from iad_agent.types import ANOMALOUS, NORMAL, Sample

#: Folder names of the defect-free images.
GOOD_NAMES = ("good", "ok", "normal")
#: Folder names that hold masks, not images of a defect type.
MASK_NAMES = ("ground_truth", "masks")


def _good_dir(folder: Path) -> Path | None:
    return next((folder / g for g in GOOD_NAMES if (folder / g).is_dir()), None)


def list_folder_categories(root: str | Path) -> list[str]:
    """The category folders under ``root`` (those holding a ``good`` folder), or ``root``'s own name
    when it holds ``good/`` itself."""
    root = require_dir(Path(root), "dataset")
    if _good_dir(root) is not None:
        return [root.name]
    return [d.name for d in list_dirs(root) if _good_dir(d) is not None]


def read_folder(root: str | Path, category: str, split: str | None = None) -> list[Sample]:
    """Read one category of a plain labelled folder (see the module's layout).

    Args:
        root: the folder of categories, or the category folder itself.
        category: the category folder's name.
        split: ``None`` or ``"test"`` (the only split).

    Returns:
        Samples sorted by path, ``dataset="folder"``.

    Raises:
        DatasetError: no good-image folder, no defect folder, a ``train/`` folder (MVTec layout),
            an image without its mask where a mask folder exists, a mask without its image, or a
            mask of the wrong size.
    """
    check_split(split, ("test",), "folder")
    root = require_dir(Path(root), "dataset")
    cat_dir = root if category == root.name and _good_dir(root) is not None else root / category
    if not category or not cat_dir.is_dir():
        raise unknown_category(category, list_folder_categories(root), root)
    if (cat_dir / "train").is_dir():
        raise DatasetError(f"{cat_dir}: has a train/ folder, the MVTec AD layout: use --dataset mvtec")
    good = _good_dir(cat_dir)
    if good is None:
        raise DatasetError(f"{cat_dir}: no folder of good images (expected one of {', '.join(GOOD_NAMES)})")
    mask_root = next((cat_dir / m for m in MASK_NAMES if (cat_dir / m).is_dir()), None)
    defects = [d for d in list_dirs(cat_dir) if d.name not in GOOD_NAMES + MASK_NAMES and list_images(d)]
    if not defects:
        raise DatasetError(f"{cat_dir}: no folder of defective images beside {good.name}/")
    samples = [Sample(image_path=p, category=category, label=NORMAL, dataset="folder", split="test")
               for p in list_images(good)]
    for d in defects:
        images = list_images(d)
        masks = pair_masks(images, d, mask_root / d.name, nested=False) if mask_root and (mask_root / d.name).is_dir() else {}
        samples += [Sample(image_path=p, category=category, label=ANOMALOUS, defect_type=d.name, mask_path=masks.get(p),
                           dataset="folder", split="test") for p in images]
    if mask_root is not None:
        orphans = [m for m in list_dirs(mask_root) if m.name not in {d.name for d in defects}]
        if orphans:
            raise DatasetError(f"{orphans[0]}: masks without a folder of images ({cat_dir / orphans[0].name})")
    return sorted(samples, key=lambda s: str(s.image_path))

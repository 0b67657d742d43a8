"""Reader for the MVTec AD folder layout (also MPDD, BTAD, MVTec AD 2, MVTec 3D-AD and re-split VisA).

Layout::

    <root>/<category>/train/good/*.png
    <root>/<category>/validation/good/*.png          (optional, e.g. MVTec LOCO)
    <root>/<category>/test/<defect>/*.png            (defect ``good`` = normal)

BTAD's release names the defect-free folders ``ok`` (``train/ok``, ``test/ok``) and its defects
``ko``; ``ok`` is read as ``good``. MVTec AD 2 has no ``test/``: its ``test_public/`` (``good``,
``bad`` and ``ground_truth/bad``) is read as the test split; the private test sets have no labels.
MVTec 3D-AD keeps each folder's colour images in an ``rgb/`` subfolder and their masks beside them
(``test/<defect>/rgb/000.png``, ``test/<defect>/gt/000.png``; the ``xyz/`` point clouds are not read):
the colour images are read, the 3D data is not.
    <root>/<category>/ground_truth/<defect>/<stem>_mask.png   (or ``<stem>.png``)

A category without any ``ground_truth`` folder is accepted (image-level labels only, every
``mask_path`` is ``None``). Where ``ground_truth/<defect>`` exists it must match
``test/<defect>`` one to one, and every mask must have its image's size.
"""

from __future__ import annotations

from pathlib import Path

from iad_agent.datasets._common import (
    DatasetError,
    check_mask_size,
    check_split,
    is_image,
    list_dirs,
    list_images,
    require_dir,
    unknown_category,
)
from iad_agent.types import ANOMALOUS, NORMAL, Sample

GOOD = "good"
#: Folder names of defect-free images: MVTec AD, MPDD and re-split VisA say ``good``, BTAD's
#: release says ``ok`` (its defects are under ``ko``).
GOOD_NAMES = (GOOD, "ok")
#: MVTec AD 2's test set with public labels (its ``test_private*`` sets have none), read as ``test``.
PUBLIC_TEST = "test_public"
#: MVTec 3D-AD: the subfolders holding a folder's colour images and their masks.
RGB, RGB_MASKS = "rgb", "gt"


def image_folder(folder: Path) -> Path:
    """Where a split or defect folder's images are: the folder, or its ``rgb/`` (MVTec 3D-AD)."""
    return folder / RGB if (folder / RGB).is_dir() and not list_images(folder) else folder


def list_mvtec_categories(root: str | Path) -> list[str]:
    """Names of the category folders under ``root`` (those with a ``train`` or ``test`` folder)."""
    root = require_dir(Path(root), "dataset")
    return [d.name for d in list_dirs(root) if (d / "train").is_dir() or (d / "test").is_dir()]


def read_mvtec(root: str | Path, category: str, split: str | None = None) -> list[Sample]:
    """Read one category of an MVTec-AD-style dataset.

    Args:
        root: the dataset folder holding one folder per category.
        category: category folder name (e.g. ``hazelnut``).
        split: ``train``, ``validation`` or ``test``; ``None`` reads every split present.

    Returns:
        The samples sorted by image path, with ``dataset="mvtec"``.

    Raises:
        DatasetError: missing category (the message lists the available ones), an image
            without its mask, a mask without its image, or a mask of the wrong size.
    """
    return read_mvtec_layout(root, category, split, dataset="mvtec", nested_masks=False)


def read_mvtec_layout(
    root: str | Path, category: str, split: str | None, *, dataset: str, nested_masks: bool
) -> list[Sample]:
    """Shared walk for MVTec AD and MVTec LOCO (see :func:`read_mvtec`).

    Args:
        nested_masks: also accept LOCO's ``ground_truth/<defect>/<stem>/000.png`` folders
            (the first file of such a folder becomes ``mask_path``).
    """
    check_split(split, dataset=dataset)
    root = require_dir(Path(root), "dataset")
    cat_dir = root / category
    if not category or not cat_dir.is_dir():
        raise unknown_category(category, list_mvtec_categories(root), root)
    test_dir = cat_dir / "test"
    gt_root = cat_dir / "ground_truth"
    if not test_dir.is_dir() and (cat_dir / PUBLIC_TEST).is_dir():  # MVTec AD 2: its public test set
        test_dir = cat_dir / PUBLIC_TEST
        gt_root = test_dir / "ground_truth"
    present = [s for s in ("train", "validation") if (cat_dir / s).is_dir()] + (["test"] if test_dir.is_dir() else [])
    if not present:
        raise DatasetError(f"{cat_dir}: no train/, validation/ or test/ folder")
    if split is not None and split not in present and split != "validation":
        raise DatasetError(f"{cat_dir / split}: split folder not found")

    samples: list[Sample] = []
    for name in ("train", "validation"):
        for good in (cat_dir / name / g for g in GOOD_NAMES):
            if split in (None, name) and good.is_dir():
                samples += [
                    Sample(image_path=p, category=category, label=NORMAL, dataset=dataset, split=name)
                    for p in list_images(image_folder(good))
                ]
    if split in (None, "test") and test_dir.is_dir():
        defects = [d.name for d in list_dirs(test_dir) if d != gt_root]
        if gt_root.is_dir():
            for gt_dir in list_dirs(gt_root):
                if gt_dir.name not in defects:
                    masks = [p for p in gt_dir.iterdir() if not p.name.startswith(".")]
                    if masks:
                        orphan = sorted(masks)[0]
                        raise DatasetError(f"{orphan}: mask without image (no folder {test_dir / gt_dir.name})")
        for defect in defects:
            label = NORMAL if defect in GOOD_NAMES else ANOMALOUS
            image_dir = image_folder(test_dir / defect)
            images = list_images(image_dir)
            gt_dir: Path | None = gt_root / defect
            if image_dir != test_dir / defect:  # MVTec 3D-AD: masks beside rgb/ (test/good's are all zero: not read)
                gt_dir = test_dir / defect / RGB_MASKS if label == ANOMALOUS else None
            masks = pair_masks(images, image_dir, gt_dir, nested_masks) if gt_dir is not None and gt_dir.is_dir() else {}
            for p in images:
                samples.append(
                    Sample(
                        image_path=p,
                        category=category,
                        label=label,
                        defect_type=None if label == NORMAL else defect,
                        mask_path=masks.get(p),
                        dataset=dataset,
                        split="test",
                    )
                )
    return sorted(samples, key=lambda s: str(s.image_path))


def _mask_key(path: Path) -> str:
    stem = path.stem if path.is_file() else path.name
    return stem[: -len("_mask")] if stem.endswith("_mask") else stem


def pair_masks(images: list[Path], image_dir: Path, gt_dir: Path, nested: bool) -> dict[Path, Path]:
    """Match each image of a test folder with its mask in ``gt_dir``, one to one."""
    index: dict[str, Path] = {}
    for entry in sorted(gt_dir.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            if not nested:
                continue
            files = list_images(entry)
            if not files:
                raise DatasetError(f"{entry}: mask folder holds no mask image")
            mask = files[0]
        elif is_image(entry):
            mask = entry
        else:
            continue
        key = _mask_key(entry)
        if key in index:
            raise DatasetError(f"{mask}: second mask for image {key!r} (also {index[key]})")
        index[key] = mask
    pairs: dict[Path, Path] = {}
    for image in images:
        mask = index.pop(image.stem, None)
        if mask is None:
            raise DatasetError(
                f"{image}: image has no mask in {gt_dir} (expected {image.stem}_mask.png or {image.stem}.png)"
            )
        check_mask_size(image, mask)
        pairs[image] = mask
    if index:
        key, orphan = min(index.items(), key=lambda kv: str(kv[1]))
        raise DatasetError(f"{orphan}: mask without image (no image {key}.* in {image_dir})")
    return pairs

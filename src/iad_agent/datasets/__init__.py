"""Dataset readers: pure functions from a folder to a sorted ``list[Sample]``.

Every reader refuses inconsistent data (an image without its mask, a mask without its image,
a mask of the wrong size, a bad annotation line, ...) with a :class:`DatasetError` whose
message names the offending file or folder.

>>> sorted(READERS)[:3]
['btad', 'deeppcb', 'folder']
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from pathlib import Path

from iad_agent.datasets._common import IMAGE_EXTENSIONS, DatasetError
from iad_agent.datasets.deeppcb import read_deeppcb
from iad_agent.datasets.folder import list_folder_categories, read_folder
from iad_agent.datasets.kolektor import read_kolektor
from iad_agent.datasets.loco import list_loco_categories, read_loco
from iad_agent.datasets.magnetic_tile import read_magnetic_tile
from iad_agent.datasets.mvtec import list_mvtec_categories, read_mvtec
from iad_agent.datasets.visa import list_visa_categories, read_visa
from iad_agent.types import Sample

__all__ = [
    "DatasetError",
    "IMAGE_EXTENSIONS",
    "READERS",
    "data_root",
    "list_categories",
    "load_dataset",
    "read_deeppcb",
    "read_folder",
    "read_kolektor",
    "read_loco",
    "read_magnetic_tile",
    "read_mvtec",
    "read_visa",
]

#: Reader for each dataset name; ``mpdd``, ``btad``, ``mvtec3d`` (its colour images) and
#: ``visa_resplit`` use the MVTec layout; ``folder`` is a plain folder of good and defective images.
READERS: dict[str, Callable[..., list[Sample]]] = {
    "mvtec": read_mvtec,
    "mpdd": read_mvtec,
    "btad": read_mvtec,
    "mvtec3d": read_mvtec,
    "visa_resplit": read_mvtec,
    "visa": read_visa,
    "loco": read_loco,
    "magnetic_tile": read_magnetic_tile,
    "deeppcb": read_deeppcb,
    "kolektor": read_kolektor,
    "folder": read_folder,
}

_CATEGORY_LISTERS: dict[str, Callable[[Path], list[str]]] = {
    "mvtec": list_mvtec_categories,
    "mpdd": list_mvtec_categories,
    "btad": list_mvtec_categories,
    "mvtec3d": list_mvtec_categories,
    "visa_resplit": list_mvtec_categories,
    "visa": list_visa_categories,
    "loco": list_loco_categories,
    "magnetic_tile": lambda root: ["magnetic_tile"],
    "deeppcb": lambda root: ["pcb"],
    "kolektor": lambda root: ["kolektor"],
    "folder": list_folder_categories,
}


def _check_name(dataset: str) -> None:
    if dataset not in READERS:
        raise DatasetError(f"unknown dataset {dataset!r}; valid names: {', '.join(sorted(READERS))}")


def list_categories(dataset: str, root: str | Path) -> list[str]:
    """The category names available for ``dataset`` under ``root``.

    Raises:
        DatasetError: unknown dataset name or unreadable root.
    """
    _check_name(dataset)
    return _CATEGORY_LISTERS[dataset](Path(root))


def load_dataset(
    dataset: str, root: str | Path, category: str | None = None, split: str | None = None
) -> list[Sample]:
    """Read ``dataset`` from ``root`` with the matching reader.

    Args:
        dataset: one of the names in :data:`READERS`.
        root: the dataset's folder (e.g. ``data_root() / "mvtec_ad"``).
        category: one category; ``None`` reads all of them.
        split: ``train`` / ``validation`` / ``test``; ``None`` reads every split.

    Returns:
        Samples sorted by image path, with ``Sample.dataset`` set to ``dataset``.

    Raises:
        DatasetError: unknown dataset name (the message lists the valid ones) or anything
            the reader refuses.
    """
    _check_name(dataset)
    reader = READERS[dataset]
    categories = [category] if category is not None else list_categories(dataset, root)
    if not categories:
        raise DatasetError(f"{root}: no {dataset} categories found")
    samples = [s for cat in categories for s in reader(root, cat, split)]
    samples = [s if s.dataset == dataset else dataclasses.replace(s, dataset=dataset) for s in samples]
    return sorted(samples, key=lambda s: str(s.image_path))


def data_root() -> Path:
    """The folder holding the shared real data.

    ``$IAD_DATA`` if set; otherwise the first ``shared/data`` folder found next to any
    ancestor of the current directory or of this file (e.g. ``/work/shared/data`` for a
    checkout at ``/work/main``).

    Raises:
        DatasetError: ``$IAD_DATA`` names no folder, or no ``shared/data`` was found.
    """
    env = os.environ.get("IAD_DATA")
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DatasetError(f"{path}: IAD_DATA does not name a folder")
        return path
    starts = [Path.cwd().resolve(), Path(__file__).resolve().parent]
    for start in starts:
        for ancestor in (start, *start.parents):
            candidate = ancestor / "shared" / "data"
            if candidate.is_dir():
                return candidate
    raise DatasetError(
        "no data folder found: set IAD_DATA to the folder holding the datasets "
        f"(no shared/data next to any ancestor of {starts[0]} or {starts[1]})"
    )

"""Reader for MVTec LOCO AD.

Layout::

    <root>/<category>/train/good/*.png
    <root>/<category>/validation/good/*.png
    <root>/<category>/test/{good,logical_anomalies,structural_anomalies}/*.png
    <root>/<category>/ground_truth/<defect>/<stem>/000.png   (official)
    <root>/<category>/ground_truth/<defect>/<stem>.png       (flattened copies)

The official release stores one mask file per defect region (``000.png``, ``001.png``, ...)
with per-defect pixel values; a :class:`~iad_agent.types.Sample` holds a single
``mask_path``, so the reader keeps the **first** file of such a folder. The true ground truth
is the union of all files in that folder (``mask_path.parent``); unioning them is left to the
caller. Flattened copies (like the one in ``shared/data``) are already a single binary mask.
"""

from __future__ import annotations

from pathlib import Path

from iad_agent.datasets.mvtec import list_mvtec_categories, read_mvtec_layout
from iad_agent.types import Sample


def list_loco_categories(root: str | Path) -> list[str]:
    """Names of the category folders under ``root``."""
    return list_mvtec_categories(root)


def read_loco(root: str | Path, category: str, split: str | None = None) -> list[Sample]:
    """Read one MVTec LOCO AD category.

    Args:
        root: the LOCO folder holding one folder per category.
        category: e.g. ``juice_bottle``.
        split: ``train``, ``validation`` or ``test``; ``None`` reads all present.

    Returns:
        Samples sorted by path, ``dataset="loco"``; ``defect_type`` is the test folder name
        (``logical_anomalies`` / ``structural_anomalies``).

    Raises:
        DatasetError: as :func:`~iad_agent.datasets.mvtec.read_mvtec`, also for an empty
            per-image mask folder.
    """
    return read_mvtec_layout(root, category, split, dataset="loco", nested_masks=True)

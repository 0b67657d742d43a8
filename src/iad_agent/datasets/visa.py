"""Reader for VisA in its original layout, driven by ``split_csv/1cls.csv``.

The CSV has the columns ``object,split,label,image,mask``; ``label`` is ``normal`` or
``anomaly`` and the paths are relative to the VisA root, e.g.
``candle/Data/Images/Anomaly/000.JPG`` and ``candle/Data/Masks/Anomaly/000.png``.
VisA names no defect types in this file, so anomalous samples get ``defect_type="anomaly"``.

The original VisA masks store small nonzero values (not 255);
:func:`iad_agent.imageio.load_mask` reads any nonzero pixel of such a mask as defective (a mask
whose values reach above 127 is cut at the midpoint), so they need no conversion. The re-split
MVTec-style copy (anomalib's preparation) is read by ``visa_resplit``.
"""

from __future__ import annotations

import csv
from pathlib import Path

from iad_agent.datasets._common import (
    DatasetError,
    check_mask_size,
    check_split,
    require_dir,
    unknown_category,
)
from iad_agent.types import ANOMALOUS, NORMAL, Sample

SPLIT_CSV = Path("split_csv") / "1cls.csv"
COLUMNS = ("object", "split", "label", "image", "mask")
LABELS = {"normal": NORMAL, "anomaly": ANOMALOUS}


def _rows(root: Path) -> list[tuple[int, dict[str, str]]]:
    csv_path = root / SPLIT_CSV
    if not csv_path.is_file():
        raise DatasetError(f"{csv_path}: VisA split file not found")
    with csv_path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DatasetError(f"{csv_path}: missing column(s) {', '.join(missing)}; expected {','.join(COLUMNS)}")
        rows = []
        for row in reader:
            rows.append((reader.line_num, {k: (row.get(k) or "").strip() for k in COLUMNS}))
    return rows


def list_visa_categories(root: str | Path) -> list[str]:
    """The ``object`` names listed in ``split_csv/1cls.csv``, sorted."""
    root = require_dir(Path(root), "dataset")
    return sorted({row["object"] for _, row in _rows(root) if row["object"]})


def read_visa(root: str | Path, category: str, split: str | None = None) -> list[Sample]:
    """Read one VisA category from the original layout.

    Args:
        root: the VisA folder (holding ``split_csv/`` and one folder per object).
        category: object name, e.g. ``candle``.
        split: ``train`` or ``test``; ``None`` reads both.

    Returns:
        Samples sorted by path, ``dataset="visa"``.

    Raises:
        DatasetError: missing CSV or columns, unknown category, a bad ``label``/``split``
            value, a listed file that does not exist, an anomaly without a mask, or a mask of
            the wrong size (messages name the CSV line and the file).
    """
    check_split(split, ("train", "test"), "visa")
    root = require_dir(Path(root), "dataset")
    rows = _rows(root)
    csv_path = root / SPLIT_CSV
    if category not in {row["object"] for _, row in rows}:
        raise unknown_category(category, sorted({r["object"] for _, r in rows if r["object"]}), root)
    samples = []
    for line, row in rows:
        if row["object"] != category:
            continue
        where = f"{csv_path}:{line}"
        if row["split"] not in ("train", "test"):
            raise DatasetError(f"{where}: split must be train or test, got {row['split']!r}")
        if row["label"] not in LABELS:
            raise DatasetError(f"{where}: label must be normal or anomaly, got {row['label']!r}")
        if split is not None and row["split"] != split:
            continue
        image = root / row["image"]
        if not row["image"] or not image.is_file():
            raise DatasetError(f"{image}: image listed in {where} not found")
        label = LABELS[row["label"]]
        mask = root / row["mask"] if row["mask"] else None
        if mask is not None and not mask.is_file():
            raise DatasetError(f"{mask}: mask listed in {where} not found")
        if label == ANOMALOUS and mask is None:
            raise DatasetError(f"{image}: anomalous image has no mask in {where}")
        if mask is not None:
            check_mask_size(image, mask)
        samples.append(
            Sample(
                image_path=image,
                category=category,
                label=label,
                defect_type="anomaly" if label == ANOMALOUS else None,
                mask_path=mask if label == ANOMALOUS else None,
                dataset="visa",
                split=row["split"],
            )
        )
    return sorted(samples, key=lambda s: str(s.image_path))

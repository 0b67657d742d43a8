"""Reader for DeepPCB (Tang et al. 2019): tested PCB images with their defect-free templates.

Layout (``root`` is the ``deeppcb`` folder or its ``PCBData`` folder)::

    PCBData/group<G>/<G>/<id>_test.jpg     tested image (640x640, binarised)
    PCBData/group<G>/<G>/<id>_temp.jpg     defect-free template -> Sample.references
    PCBData/group<G>/<G>_not/<id>.txt      one defect per line: x1 y1 x2 y2 type
    PCBData/trainval.txt, PCBData/test.txt (optional split lists)

Types: 1 open, 2 short, 3 mousebite, 4 spur, 5 spurious copper, 6 pin-hole. Every tested
image has defects, so every sample is anomalous; ``defect_type`` is the most frequent type
(ties: the lowest type id), ``boxes``/``box_types`` hold every defect. Without split lists
every sample gets ``split="test"``.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from iad_agent.datasets._common import DatasetError, check_split, is_image, list_dirs, require_dir, size_of
from iad_agent.types import ANOMALOUS, Box, Sample

CATEGORY = "pcb"
DEFECT_TYPES = {1: "open", 2: "short", 3: "mousebite", 4: "spur", 5: "spurious_copper", 6: "pin_hole"}
SPLIT_FILES = {"train": "trainval.txt", "test": "test.txt"}
_SEP = re.compile(r"[,\s]+")


def read_deeppcb(root: str | Path, category: str | None = None, split: str | None = None) -> list[Sample]:
    """Read DeepPCB test/template pairs with their box annotations.

    Args:
        root: the ``deeppcb`` folder or the ``PCBData`` folder.
        category: ``None`` or ``"pcb"`` (the only category).
        split: ``train`` (``trainval.txt``), ``test`` or ``None`` for all.

    Returns:
        Samples sorted by path, ``dataset="deeppcb"``, boxes normalized by the image size.

    Raises:
        DatasetError: a missing template or annotation, a template or annotation without its
            tested image, a bad annotation line (file and line number named), or an image
            listed in neither or both split files.
    """
    if category not in (None, CATEGORY):
        raise DatasetError(f"deeppcb has the single category {CATEGORY!r}, got {category!r}")
    check_split(split, ("train", "test"), "deeppcb")
    data = _pcbdata_dir(Path(root))
    splits = _read_split_lists(data)
    samples = []
    for group in [d for d in list_dirs(data) if d.name.startswith("group")]:
        for image_dir in [d for d in list_dirs(group) if not d.name.endswith("_not")]:
            ann_dir = group / f"{image_dir.name}_not"
            samples += _read_folder(data, image_dir, ann_dir, splits)
    if not samples:
        raise DatasetError(f"{data}: no group*/<G>/<id>_test.jpg images found")
    if split is not None:
        samples = [s for s in samples if s.split == split]
    return sorted(samples, key=lambda s: str(s.image_path))


def _pcbdata_dir(root: Path) -> Path:
    require_dir(root, "dataset")
    if (root / "PCBData").is_dir():
        return root / "PCBData"
    if any(d.name.startswith("group") for d in list_dirs(root)):
        return root
    raise DatasetError(f"{root}: neither a PCBData folder nor a folder containing one")


def _key(path: str | Path) -> str:
    """``group1/1/123_test.jpg`` -> ``group1/1/123`` (the id shared by test, temp and lists)."""
    p = Path(path)
    stem = p.stem
    for suffix in ("_test", "_temp"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return (p.parent / stem).as_posix()


def _read_split_lists(data: Path) -> dict[str, str] | None:
    """Map image key -> split from trainval.txt / test.txt, or ``None`` when neither exists."""
    if not any((data / name).is_file() for name in SPLIT_FILES.values()):
        return None
    assigned: dict[str, str] = {}
    for split, name in SPLIT_FILES.items():
        path = data / name
        if not path.is_file():
            continue
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            key = _key(parts[0])
            if assigned.get(key, split) != split:
                raise DatasetError(f"{path}:{lineno}: {parts[0]} is also listed in {SPLIT_FILES[assigned[key]]}")
            assigned[key] = split
    return assigned


def _read_folder(data: Path, image_dir: Path, ann_dir: Path, splits: dict[str, str] | None) -> list[Sample]:
    files = [p for p in image_dir.iterdir() if is_image(p)]
    tests = sorted(p for p in files if p.stem.endswith("_test"))
    temps = {p.stem[: -len("_temp")]: p for p in files if p.stem.endswith("_temp")}
    anns = (
        {p.stem: p for p in ann_dir.iterdir() if p.suffix == ".txt" and not p.name.startswith(".")}
        if ann_dir.is_dir()
        else {}
    )
    samples = []
    for image in tests:
        ident = image.stem[: -len("_test")]
        template = temps.pop(ident, None)
        if template is None:
            raise DatasetError(f"{image}: tested image has no template {ident}_temp{image.suffix} in {image_dir}")
        ann = anns.pop(ident, None)
        if ann is None:
            raise DatasetError(f"{image}: tested image has no annotation {ann_dir / (ident + '.txt')}")
        width, height = size_of(image)
        defects = _read_annotation(ann, width, height)
        key = _key(image.relative_to(data))
        if splits is None:
            sample_split = "test"
        elif key in splits:
            sample_split = splits[key]
        else:
            raise DatasetError(f"{image}: listed in neither {data / 'trainval.txt'} nor {data / 'test.txt'}")
        counts = Counter(t for _, t in defects)
        top = min(counts, key=lambda t: (-counts[t], t))
        samples.append(
            Sample(
                image_path=image,
                category=CATEGORY,
                label=ANOMALOUS,
                defect_type=DEFECT_TYPES[top],
                boxes=tuple(b for b, _ in defects),
                box_types=tuple(DEFECT_TYPES[t] for _, t in defects),
                references=(template,),
                dataset="deeppcb",
                split=sample_split,
            )
        )
    if temps:
        orphan = min(temps.values())
        raise DatasetError(f"{orphan}: template without tested image {orphan.name.replace('_temp', '_test')}")
    if anns:
        orphan = min(anns.values())
        raise DatasetError(f"{orphan}: annotation without tested image in {image_dir}")
    return samples


def _read_annotation(path: Path, width: int, height: int) -> list[tuple[Box, int]]:
    """Parse ``x1 y1 x2 y2 type`` lines (space or comma separated) into normalized boxes."""
    defects = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = line.strip()
        if not text:
            continue
        parts = _SEP.split(text)
        try:
            if len(parts) != 5:
                raise ValueError(f"expected 5 fields, got {len(parts)}")
            x1, y1, x2, y2 = (float(v) for v in parts[:4])
            kind = int(parts[4])
        except ValueError as exc:
            raise DatasetError(
                f"{path}:{lineno}: bad annotation line {text!r} ({exc}); expected 'x1 y1 x2 y2 type'"
            ) from exc
        if kind not in DEFECT_TYPES:
            raise DatasetError(f"{path}:{lineno}: unknown defect type {kind} (valid: 1..6)")
        if not (x1 < x2 and y1 < y2):
            raise DatasetError(f"{path}:{lineno}: empty or inverted box {text!r}")
        box = Box.from_pixels(x1, y1, x2, y2, width, height)
        if box.area <= 0:
            raise DatasetError(f"{path}:{lineno}: box {text!r} lies outside the {width}x{height} image")
        defects.append((box, kind))
    if not defects:
        raise DatasetError(f"{path}: annotation lists no defect")
    return defects

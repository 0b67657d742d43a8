"""Helpers shared by the dataset readers (private).

Everything here either returns plain paths or raises :class:`DatasetError` with a message
that names the offending file or folder.
"""

from __future__ import annotations

from pathlib import Path

from iad_agent.imageio import ImageError, image_size

#: Image suffixes every reader accepts (compared lower-cased).
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
#: Split names a :class:`~iad_agent.types.Sample` may carry.
SPLITS = ("train", "validation", "test")


class DatasetError(ValueError):
    """A dataset folder is missing, incomplete or inconsistent; the message names the file."""


def is_image(path: Path) -> bool:
    """Whether ``path`` is a visible regular file with an image suffix."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside ``folder``, sorted (hidden files skipped)."""
    return sorted(p for p in folder.iterdir() if is_image(p))


def list_dirs(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder``, sorted."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a folder, else raise a :class:`DatasetError` naming it."""
    if not path.is_dir():
        raise DatasetError(f"{path}: {what} folder not found")
    return path


def check_split(split: str | None, allowed: tuple[str, ...] = SPLITS, dataset: str = "") -> None:
    """Refuse a split name the dataset does not have."""
    if split is not None and split not in allowed:
        where = f" for {dataset}" if dataset else ""
        raise DatasetError(f"unknown split {split!r}{where}; valid splits: {', '.join(allowed)}")


def size_of(path: Path) -> tuple[int, int]:
    """``(width, height)`` of an image file (header only), as a :class:`DatasetError` on failure."""
    try:
        return image_size(path)
    except ImageError as exc:
        raise DatasetError(str(exc)) from exc


def check_mask_size(image: Path, mask: Path) -> None:
    """Refuse a mask whose size differs from its image's (no pixel decoding)."""
    image_wh, mask_wh = size_of(image), size_of(mask)
    if image_wh != mask_wh:
        raise DatasetError(
            f"{mask}: mask is {mask_wh[0]}x{mask_wh[1]} but its image {image} is {image_wh[0]}x{image_wh[1]}"
        )


def unknown_category(category: str, available: list[str], root: Path) -> DatasetError:
    """The error for a category that is not in ``root``."""
    listed = ", ".join(available) if available else "none"
    return DatasetError(f"{root / category}: category {category!r} not found in {root}; available: {listed}")

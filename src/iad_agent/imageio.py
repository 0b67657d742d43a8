"""Safe image and mask loading: every failure is an :class:`ImageError` naming the file.

Industrial images arrive in every form: 16-bit TIFF/PNG from line cameras, palette PNGs,
grayscale, RGBA, truncated uploads, huge panoramas. Everything is converted to 8-bit RGB;
images larger than ``max_side`` are downscaled (with a logged message) instead of exhausting
memory, and images beyond ``MAX_PIXELS`` are refused before they are decoded.

Writes are atomic (a temporary file beside the target, then a rename) and create files with
the permissions the umask allows, like any other program: a team's shared workspace stays
readable to the group. :func:`check_output_path` tells, before any work starts, whether an
output can be written at all.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import secrets
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

#: Images with more pixels than this are refused without decoding (about 16k × 16k).
MAX_PIXELS = 16_384 * 16_384
#: Decoded images with a longer side are downscaled to this size.
DEFAULT_MAX_SIDE = 4096
#: Images (after any downscaling) must be at least this many pixels on each side.
MIN_SIDE = 8
#: File suffixes taken as images when a folder is scanned.
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class ImageError(ValueError):
    """An image could not be used; the message names the file and the problem."""


class OutputPathError(ValueError):
    """An output cannot be written there; the message names the path and the problem."""


def _open(path: Path) -> Image.Image:
    if not path.exists():
        raise ImageError(f"{path}: file not found")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image")
    if path.stat().st_size == 0:
        raise ImageError(f"{path}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except UnidentifiedImageError as exc:
        raise ImageError(f"{path}: not a readable image (unknown or corrupt format)") from exc
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{path}: image too large to decode safely ({exc})") from exc
    except OSError as exc:
        raise ImageError(f"{path}: cannot open image ({exc})") from exc
    w, h = img.size
    if w * h > MAX_PIXELS:
        raise ImageError(f"{path}: image is {w}x{h} pixels, above the limit of {MAX_PIXELS} pixels; downscale it first")
    if w < MIN_SIDE or h < MIN_SIDE:
        raise ImageError(f"{path}: image is only {w}x{h} pixels; at least {MIN_SIDE}x{MIN_SIDE} is needed")
    return img


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` without decoding the pixels."""
    return _open(Path(path)).size


def to_rgb(img: Image.Image, source: str = "image") -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (16-bit and float images are rescaled, not clipped)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            arr = arr / 257.0
        else:
            lo, hi = float(arr.min()), float(arr.max())
            arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA") or (img.mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
        background = Image.new("RGBA", img.size, (0, 0, 0, 255))
        img = Image.alpha_composite(background, img)
    if img.mode != "RGB":
        try:
            img = img.convert("RGB")
        except (ValueError, OSError) as exc:
            raise ImageError(f"{source}: cannot convert mode {img.mode} to RGB ({exc})") from exc
    return img


def load_image(path: str | Path, max_side: int = DEFAULT_MAX_SIDE) -> Image.Image:
    """Load an image as 8-bit RGB, downscaling anything with a side above ``max_side``.

    Raises:
        ImageError: missing, empty, unreadable, truncated, or absurdly large files.
    """
    path = Path(path)
    img = _open(path)
    w, h = img.size
    if max(w, h) > max_side:
        new = downscaled_size((w, h), max_side)
        if min(new) < MIN_SIDE:
            raise ImageError(f"{path}: image is {w}x{h} pixels; downscaled to fit {max_side} px it would be only "
                             f"{new[0]}x{new[1]}, below the {MIN_SIDE}x{MIN_SIDE} minimum (crop it into tiles first)")
    if max(w, h) > max_side and img.format == "JPEG":
        img.draft("RGB", (max_side, max_side))  # decode at reduced scale: cheap and bounded
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: image data is corrupt or truncated ({exc})") from exc
    img = to_rgb(img, str(path))
    if max(img.size) > max_side:
        new = downscaled_size(img.size, max_side)
        log.warning("%s: %dx%d image downscaled to %dx%d", path, w, h, *new)
        img = img.resize(new, Image.Resampling.BILINEAR)
    return img


def downscaled_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """``(width, height)`` scaled so the longer side is ``max_side`` (unchanged when it fits).

    >>> downscaled_size((16384, 8), 4096), downscaled_size((300, 200), 4096)
    ((4096, 2), (300, 200))
    """
    w, h = size
    if max(w, h) <= max_side:
        return w, h
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))


def content_hash(img: Image.Image) -> str:
    """SHA-256 of an image's decoded pixels, mode and size: the same picture under any name or file format.

    >>> a, b = Image.new("RGB", (8, 8), (1, 2, 3)), Image.new("RGB", (8, 8), (1, 2, 4))
    >>> content_hash(a) == content_hash(a.copy()), content_hash(a) == content_hash(b)
    (True, False)
    """
    h = hashlib.sha256(f"{img.mode}:{img.width}x{img.height}:".encode())
    h.update(img.tobytes())
    return h.hexdigest()


@dataclass
class ImageFolder:
    """The images of a folder, and those in its subfolders that were left out."""

    folder: Path
    files: list[Path]
    unused: int = 0  # images in subfolders, not included (scan not recursive)
    unused_folders: list[str] = field(default_factory=list)

    @property
    def warning(self) -> str | None:
        """A sentence for the user when images in subfolders were left out, else None."""
        if not self.unused:
            return None
        where = ", ".join(self.unused_folders[:5]) + (", ..." if len(self.unused_folders) > 5 else "")
        return (f"{self.unused} image{'s' * (self.unused != 1)} in subfolders of {self.folder} ({where}) "
                "were not used; pass --recursive to include them")


def scan_images(folder: str | Path, recursive: bool = False) -> ImageFolder:
    """A folder's image files (sorted; hidden files and folders skipped), and a count of those in
    subfolders that are left out when not ``recursive``.

    Raises:
        NotADirectoryError: ``folder`` is not a folder.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder}: not a folder")
    files: list[Path] = []
    unused, unused_folders = 0, []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = [Path(root) / n for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES and not n.startswith(".")]
        if Path(root) == folder or recursive:
            files.extend(here)
        elif here:
            unused += len(here)
            unused_folders.append(str(Path(root).relative_to(folder)))
    return ImageFolder(folder, sorted(files), unused, unused_folders)


def load_mask(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """Load a ground-truth mask as a bool array (above 127, or nonzero for 0/1 masks = anomalous).

    Args:
        size: ``(width, height)`` to resize to with nearest-neighbour sampling.
    """
    path = Path(path)
    img = _open(path)
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: mask data is corrupt or truncated ({exc})") from exc
    if img.mode == "1":
        img = img.convert("L")
    elif img.mode != "L":
        img = to_rgb(img, str(path)).convert("L")
    if size is not None and img.size != tuple(size):
        img = img.resize(tuple(size), Image.Resampling.NEAREST)
    arr = np.asarray(img)
    # Masks stored as 0/1 or small label values (VisA, some KolektorSDD copies) count as nonzero;
    # 0..255 masks with soft edges (Magnetic Tile) are cut at the midpoint.
    return arr > 127 if arr.max() > 127 else arr > 0


def _create_exclusive(folder: Path, prefix: str, suffix: str = "") -> tuple[int, Path]:
    """A new file in ``folder`` with a random name, opened for writing, mode ``0o666 & ~umask``.

    ``tempfile.mkstemp`` would force mode 0600 whatever the umask; the kernel applies the umask
    to ``os.open``'s mode, so files come out as any other program's would.
    """
    for _ in range(100):
        path = folder / f"{prefix}{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: cannot create a temporary file")


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or a new entry in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so readers see either the old or the new content, never half of it.

    The new file gets the umask's permissions (``0o666 & ~umask``), not a private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_exclusive(path.parent, f".{path.name}.", ".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_png(img: Image.Image, path: str | Path) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def check_output_path(path: str | Path, folder: bool = False) -> Path:
    """Check, before any work starts, that ``path`` can be written; return it.

    Nothing is created: the nearest existing ancestor must be a folder in which a file can be
    made (a probe file is created and removed), and ``path`` itself must not be a folder (for a
    file output, ``folder=False``) or a file (for an output folder, ``folder=True``).

    Raises:
        OutputPathError: naming the path and what is wrong with it.
    """
    path = Path(path).expanduser()
    kind = "output folder" if folder else "output file"
    if path.exists() or path.is_symlink():
        if folder and not path.is_dir():
            raise OutputPathError(f"{path}: {kind} is an existing file, not a folder")
        if not folder and path.is_dir():
            raise OutputPathError(f"{path}: {kind} is an existing folder; give a file name")
    probe_in = path if folder and path.is_dir() else path.parent
    ancestor = probe_in
    while not ancestor.exists():
        if ancestor.is_symlink():
            raise OutputPathError(f"{path}: cannot write the {kind}: {ancestor} is a broken link")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputPathError(f"{path}: cannot write the {kind}: {ancestor} is a file, not a folder")
    try:
        fd, probe = _create_exclusive(ancestor, ".iad-write-check.")
    except OSError as exc:
        raise OutputPathError(f"{path}: cannot write the {kind}: {ancestor} is not writable ({exc.strerror or exc})") from exc
    os.close(fd)
    probe.unlink(missing_ok=True)
    return path


def data_url(img: Image.Image, fmt: str = "png", max_side: int | None = None, compress_level: int = 6) -> str:
    """The image as a ``data:`` URL (the HTML report, VLM requests), RGB.

    Args:
        fmt: ``png`` (lossless) or ``jpeg`` (quality 95).
        max_side: downsize (never upsize) so that the longer side is at most this.
        compress_level: PNG zlib level (1: larger, several times faster; 6: Pillow's default).

    >>> data_url(Image.new("RGB", (4, 2)), max_side=2)[:22]
    'data:image/png;base64,'
    """
    if max_side and max(img.size) > max_side:
        img = img.copy()
        img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    if fmt == "jpeg":
        img.convert("RGB").save(buf, format="JPEG", quality=95)
    else:
        img.convert("RGB").save(buf, format="PNG", compress_level=compress_level)
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode()

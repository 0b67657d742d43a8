"""Safe image and mask loading: every failure is an :class:`ImageError` naming the file.

Industrial images arrive in every form: 16-bit TIFF/PNG from line cameras, palette PNGs,
grayscale, RGBA, truncated uploads, huge panoramas. Everything is converted to 8-bit RGB;
images larger than ``max_side`` are downscaled (with a logged message) instead of exhausting
memory, and images beyond ``MAX_PIXELS`` are refused before they are decoded.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

log = logging.getLogger(__name__)

#: Images with more pixels than this are refused without decoding (about 16k × 16k).
MAX_PIXELS = 16_384 * 16_384
#: Decoded images with a longer side are downscaled to this size.
DEFAULT_MAX_SIDE = 4096


class ImageError(ValueError):
    """An image could not be used; the message names the file and the problem."""


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
    if w < 8 or h < 8:
        raise ImageError(f"{path}: image is only {w}x{h} pixels; at least 8x8 is needed")
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
    if max(w, h) > max_side and img.format == "JPEG":
        img.draft("RGB", (max_side, max_side))  # decode at reduced scale: cheap and bounded
    try:
        img.load()
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{path}: image data is corrupt or truncated ({exc})") from exc
    img = to_rgb(img, str(path))
    if max(img.size) > max_side:
        scale = max_side / max(img.size)
        new = (max(1, round(img.width * scale)), max(1, round(img.height * scale)))
        log.warning("%s: %dx%d image downscaled to %dx%d", path, w, h, *new)
        img = img.resize(new, Image.Resampling.BILINEAR)
    return img


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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file so readers see either the old or the new content, never half of it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def save_png(img: Image.Image, path: str | Path) -> None:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())


def data_url(img: Image.Image, fmt: str = "png", max_side: int | None = None) -> str:
    """The image as a ``data:`` URL (the HTML report, VLM requests), RGB.

    Args:
        fmt: ``png`` (lossless) or ``jpeg`` (quality 95).
        max_side: downsize (never upsize) so that the longer side is at most this.

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
        img.convert("RGB").save(buf, format="PNG")
    return f"data:image/{fmt};base64," + base64.b64encode(buf.getvalue()).decode()

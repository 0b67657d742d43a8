"""Stored files by content hash: the same image, heat map or report is kept once.

``<data>/blobs/ab/abcdef…`` holds the bytes whose SHA-256 is ``abcdef…``; each is written
aside and renamed into place (a crash leaves either the whole file or none), and a file
that is already there is not written again. The ``blobs`` table records each file's media
type in the same transaction as the inspection that refers to it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from iad_agent.imageio import atomic_write_bytes

_SHA = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class BlobRef:
    """A stored file: its content hash, media type and size in bytes."""

    sha256: str
    media_type: str
    size: int


class BlobStore:
    """Files under ``root``, named by the SHA-256 of their content."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha256: str) -> Path:
        """Where the file of ``sha256`` lives (``ValueError`` for anything but 64 hex digits)."""
        if not _SHA.match(sha256):
            raise ValueError(f"not a content hash: {sha256!r}")
        return self.root / sha256[:2] / sha256

    def put(self, data: bytes, media_type: str) -> BlobRef:
        """Store ``data`` (once) and return its reference."""
        sha = hashlib.sha256(data).hexdigest()
        path = self.path(sha)
        if not (path.exists() and path.stat().st_size == len(data)):
            atomic_write_bytes(path, data)
        return BlobRef(sha, media_type, len(data))

    def exists(self, sha256: str) -> bool:
        try:
            return self.path(sha256).is_file()
        except ValueError:
            return False

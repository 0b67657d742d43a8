"""What ``iad serve`` configures, in one frozen object passed to :func:`iad_agent.service.app.create_app`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

#: Environment variable holding the API key (``--api-key-env`` names another).
DEFAULT_API_KEY_ENV = "IAD_API_KEY"


@dataclass(frozen=True)
class Settings:
    """Service settings.

    Attributes:
        workspace: the products folder (as ``iad register --workspace``).
        data_dir: the history database and the stored images, heat maps and reports
            (default ``<workspace>/service``).
        workers: worker threads for inspections and registrations (CPU-bound work runs there,
            never on the event loop); default: one per core, at most 4.
        api_key: when set, every request but ``/api/health`` and static files must carry it
            (header ``X-API-Key`` or ``Authorization: Bearer``, or the cookie the UI's login
            page sets).
        max_upload_bytes: largest request body accepted (413 above it).
        max_pixels: largest image (width × height) accepted for inspection or registration,
            checked before the pixels are decoded (decompression bombs).
        folder_roots: server-side folders (registration, batches) must lie inside one of these.
        batch_concurrency: images of one batch inspected at once (default: workers − 1, at
            least 1, so an interactive inspection still finds a free worker).
    """

    workspace: Path
    data_dir: Path | None = None
    workers: int = field(default_factory=lambda: max(1, min(4, os.cpu_count() or 1)))
    api_key: str | None = None
    max_upload_bytes: int = 64 * 1024 * 1024
    max_pixels: int = 40_000_000
    folder_roots: tuple[Path, ...] = ()
    batch_concurrency: int | None = None

    @property
    def data(self) -> Path:
        return Path(self.data_dir) if self.data_dir else Path(self.workspace) / "service"

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.data / 'history.sqlite'}"

    @property
    def batch_workers(self) -> int:
        return self.batch_concurrency or max(1, self.workers - 1)

    @property
    def threads_per_worker(self) -> int:
        """torch / BLAS threads per worker, so that workers do not oversubscribe the cores."""
        return max(1, (os.cpu_count() or 1) // self.workers)

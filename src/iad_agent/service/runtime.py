"""The service's workers: CPU-bound work off the event loop, loaded products kept between requests.

Every inspection, registration and threshold change runs in a small thread pool (one thread
per core by default; torch, faiss and BLAS are limited to their share of the cores so the
workers do not fight over them). Each worker thread keeps its own inspectors, keyed by
product *version* (:func:`iad_agent.api.product_version`): a product stays loaded between
requests and is reloaded only when it changed on disk (re-registered, new threshold). Worker
threads never share a product object, so nothing in a product needs to be thread-safe.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from iad_agent import api
from iad_agent.errors import IADError
from iad_agent.imageio import ImageError
from iad_agent.service import recorder
from iad_agent.service.db import Database
from iad_agent.service.settings import Settings
from iad_agent.service.store import BlobStore

if TYPE_CHECKING:
    from iad_agent.inspector import Inspector
    from iad_agent.product import Product

T = TypeVar("T")
#: Products each worker thread keeps loaded (least recently used are dropped).
CACHED_PER_THREAD = 4
#: False-alarm rates the product page's threshold control moves between.
FPR_STEPS = 60


class ImageTooLarge(ImageError):
    """An image above the service's pixel limit (answered with 413)."""


class FolderNotAllowed(IADError, PermissionError):
    """A server-side folder outside the folders the service may read (answered with 403)."""


def _limit_threads(threads: int) -> None:
    """Run in each worker thread at start: cap torch, faiss and BLAS thread pools (process-wide)."""
    import faiss
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(threads)
    faiss.omp_set_num_threads(threads)
    threadpool_limits(limits=threads)


def _warm() -> None:
    from iad_agent.vision.features import FeatureConfig, _load_backbone

    _load_backbone(FeatureConfig().backbone)


class Runtime:
    """Worker pool, product cache and the operations the routes call (each runs in a worker)."""

    def __init__(self, settings: Settings, db: Database, store: BlobStore) -> None:
        self.settings, self.db, self.store = settings, db, store
        self.executor = ThreadPoolExecutor(settings.workers, thread_name_prefix="iad-worker", initializer=_limit_threads,
                                           initargs=(settings.threads_per_worker,))
        self._local = threading.local()
        self._product_locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run ``fn`` in a worker thread and wait for it without blocking the event loop."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, functools.partial(fn, *args, **kwargs))

    def warm_up(self) -> None:
        """Start every worker and load torch, faiss and the default backbone, in the background."""
        for _ in range(self.settings.workers):
            self.executor.submit(_warm)

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)

    # ------------------------------------------------------------------ products
    def _cache(self) -> OrderedDict:
        if not hasattr(self._local, "cache"):
            self._local.cache = OrderedDict()
        return self._local.cache

    def product(self, name: str) -> tuple[str, Product]:
        """``(version, product)``, loaded once per worker thread and version."""
        version = api.product_version(name, self.settings.workspace)
        cache = self._cache()
        hit = cache.get(("product", name))
        if hit is None or hit[0] != version:
            hit = (version, api.load_product(name, self.settings.workspace))
            cache[("product", name)] = hit
            for key in [k for k in cache if k[0] == "inspector" and k[1] == name]:
                del cache[key]  # inspectors of the old version go with it
        cache.move_to_end(("product", name))
        while sum(1 for k in cache if k[0] == "product") > CACHED_PER_THREAD:
            oldest = next(k for k in cache if k[0] == "product")
            for key in [k for k in cache if k[1] == oldest[1]]:
                del cache[key]
        return hit

    def inspector(self, name: str, policy: str) -> tuple[str, Inspector]:
        """``(version, inspector)`` of a product and policy, kept between requests."""
        version, product = self.product(name)
        cache = self._cache()
        key = ("inspector", name, policy)
        hit = cache.get(key)
        if hit is None or hit[0] != version:
            hit = (version, api.make_inspector(product, policy))
            cache[key] = hit
        return hit

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._product_locks.setdefault(name, threading.Lock())

    def list_products(self) -> list[dict[str, Any]]:
        """Every product's summary, read without loading any (a damaged one carries its ``error``)."""
        out = []
        for summary in api.product_summaries(self.settings.workspace):
            summary.pop("folder", None)
            summary["registered_at"] = summary.get("created")
            out.append(summary)
        return out

    def details(self, name: str, curve: bool = True) -> dict[str, Any]:
        """What the product page shows: images, threshold, false-alarm rate and what it means."""
        version, product = self.product(name)
        cal = product.bank.calibration
        d = {"name": name, "version": version, "images": len(product.bank), "image_size": product.image_size,
             "backbone": product.bank.config.backbone, "resolution": product.bank.config.resolution,
             "defect_types": product.defect_types, "labelled_defects": len(product.defects.types),
             "priors": sorted(product.priors), "registered_at": getattr(product, "created", None),
             "updated_at": getattr(product, "updated", None), **threshold_meaning(product, cal.fpr, cal.threshold)}
        if curve:
            steps = [api.FPR_RANGE[0] * (api.FPR_RANGE[1] / api.FPR_RANGE[0]) ** (i / (FPR_STEPS - 1)) for i in range(FPR_STEPS)]
            d["curve"] = [{"fpr": round(f, 6), "threshold": round(api.threshold_for_fpr(product, f), 6)} for f in steps]
            d["good_scores"] = [round(s, 6) for s in sorted(cal.global_scores)]
        return d

    def preview(self, name: str, fpr: float | None = None, threshold: float | None = None) -> dict[str, Any]:
        """The threshold a false-alarm rate gives, or the rate a threshold means (nothing is saved)."""
        _, product = self.product(name)
        if fpr is not None:
            _check_fpr(fpr)
            return threshold_meaning(product, fpr, api.threshold_for_fpr(product, fpr))
        return threshold_meaning(product, api.fpr_for_threshold(product, threshold), threshold)

    def set_threshold(self, name: str, fpr: float | None = None, threshold: float | None = None) -> dict[str, Any]:
        with self._lock(name):
            if fpr is None:
                _, product = self.product(name)
                fpr = api.fpr_for_threshold(product, threshold)
            _check_fpr(fpr)
            api.set_fpr(name, fpr, self.settings.workspace)
        return self.details(name)

    def register(self, name: str, normals: Path | Sequence[Path], *, fpr: float, priors: dict[str, str] | None,
                 allow_mixed_sizes: bool) -> dict[str, Any]:
        files = [normals] if isinstance(normals, Path) else list(normals)
        for f in files:
            if f.is_file():
                self.check_pixels(f, f.name)
        with self._lock(name):
            api.register(name, normals, workspace=self.settings.workspace, fpr=fpr, priors=priors,
                         allow_mixed_sizes=allow_mixed_sizes)
        return self.details(name)

    def register_uploads(self, name: str, saved: Sequence[tuple[Path, str]], *, fpr: float, priors: dict[str, str] | None,
                         allow_mixed_sizes: bool) -> dict[str, Any]:
        """Register uploaded good images: checked, kept in the blob store (the product refers to them there), registered.

        Args:
            saved: ``(temporary file, the user's file name)`` of each upload.
        """
        from sqlalchemy.dialects.sqlite import insert

        from iad_agent.imageio import load_image
        from iad_agent.service.db import Blob, utcnow

        for path, label in saved:
            self.check_pixels(path, label)
            try:
                load_image(path)
            except ImageError as exc:
                raise ImageError(str(exc).replace(str(path), label)) from exc
        refs = [self.store.put(path.read_bytes(), recorder.media_type(path)) for path, _ in saved]
        with self.db.write() as s:
            for ref in refs:
                s.execute(insert(Blob).values(sha256=ref.sha256, media_type=ref.media_type, size=ref.size,
                                              created_at=utcnow()).on_conflict_do_nothing())
        stored = [self.store.path(ref.sha256) for ref in refs]
        try:
            return self.register(name, stored, fpr=fpr, priors=priors, allow_mixed_sizes=allow_mixed_sizes)
        except api.RegistrationError as exc:  # name the user's files, not the stored copies
            message = str(exc)
            for path, (_, label) in zip(stored, saved):
                message = message.replace(str(path.resolve()), label).replace(str(path), label)
            raise api.RegistrationError(message) from exc

    def delete(self, name: str) -> None:
        with self._lock(name):
            api.delete_product(name, self.settings.workspace)

    def allowed_folder(self, folder: str) -> Path:
        """``folder`` resolved, if it lies inside one of the service's folder roots."""
        path = Path(folder).expanduser().resolve()
        roots = [Path(r).resolve() for r in self.settings.folder_roots]
        if not any(path == r or r in path.parents for r in roots):
            allowed = ", ".join(map(str, roots)) or "none (start iad serve with --folder-root DIR)"
            raise FolderNotAllowed(f"{folder}: the service may only read folders inside {allowed}")
        if not path.is_dir():
            raise api.RegistrationError(f"{folder}: not a folder on the server")
        return path

    # ---------------------------------------------------------------- inspection
    def check_pixels(self, path: Path, label: str) -> None:
        """Refuse an image above the pixel limit before its pixels are decoded."""
        from iad_agent.imageio import image_size

        try:
            w, h = image_size(path)
        except ImageError as exc:
            raise ImageError(str(exc).replace(str(path), label)) from exc
        if w * h > self.settings.max_pixels:
            raise ImageTooLarge(f"{label}: image is {w}x{h} pixels, above this service's limit of "
                                f"{self.settings.max_pixels:,} pixels; downscale it first")

    def inspect(self, path: Path, product: str, policy: str, filename: str, batch_item: int | None = None,
                batch_id: str | None = None) -> int:
        """Inspect one image file and record it; returns the inspection's id.

        Raises:
            ImageError: the image is unreadable or too large (the message names ``filename``).
            ProductNotFound, ProductError, PolicyConfigError: as :func:`iad_agent.api.make_inspector`.
        """
        self.check_pixels(path, filename)
        version, inspector = self.inspector(product, policy)
        try:
            result = inspector.inspect(path)
        except ImageError as exc:
            raise ImageError(str(exc).replace(str(path), filename)) from exc
        result.trajectory.query_path = Path(filename)  # the answer names the image as the user knows it
        return recorder.record(self.db, self.store, result, image_path=path, filename=filename, product_version=version,
                               policy=policy, batch_item=batch_item, batch_id=batch_id)


def _check_fpr(fpr: float) -> None:
    if not api.FPR_RANGE[0] <= fpr <= api.FPR_RANGE[1]:
        raise api.RegistrationError(f"false-alarm rate must be between {api.FPR_RANGE[0]} and {api.FPR_RANGE[1]}, got {fpr}")


def threshold_meaning(product: Product, fpr: float, threshold: float) -> dict[str, Any]:
    """A threshold with its expected false-alarm rate, in numbers and in words."""
    scores = product.bank.calibration.global_scores
    flagged = sum(s > threshold for s in scores)
    one_in = round(1 / fpr) if fpr > 0 else None
    return {"fpr": round(fpr, 6), "threshold": round(threshold, 6), "method": product.bank.calibration.method,
            "held_out": len(scores), "held_out_flagged": flagged,
            "meaning": (f"about {fpr:.1%} of good parts (1 in {one_in}) will be flagged as anomalous; "
                        f"{flagged} of the {len(scores)} held-out good images score above {threshold:.4g}")}

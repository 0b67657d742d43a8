"""Batch jobs over a server-side folder: progress, cancel, and resume after a crash.

A batch is created with one ``batch_items`` row per image (found with
:func:`iad_agent.scale.folder.find_images`) and runs on the event loop as an asyncio task
that feeds the pending items to the worker pool, ``batch_concurrency`` at a time. Each item
is marked done in the transaction that records its inspection, so whatever stops the
server — a cancel, a shutdown, ``kill -9`` — the database says exactly which images are
done. On start, batches that were running are marked ``interrupted``; resuming one inspects
only its pending items.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from iad_agent import api
from iad_agent.imageio import ImageError
from iad_agent.service import recorder
from iad_agent.service.db import Batch, BatchItem, utcnow
from iad_agent.service.runtime import Runtime

log = logging.getLogger(__name__)
ACTIVE = ("queued", "running")


class BatchRunner:
    """Starts, cancels and resumes batch jobs; one asyncio task per running batch."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime, self.db = runtime, runtime.db
        self._tasks: dict[str, asyncio.Task] = {}
        self._cancel: set[str] = set()
        self._stopping = False

    def mark_interrupted(self) -> int:
        """At start: batches that were running when the server stopped can be resumed."""
        with self.db.write() as s:
            res = s.execute(update(Batch).where(Batch.status.in_(ACTIVE)).values(
                status="interrupted", message="the server stopped while this batch ran; resume it", updated_at=utcnow()))
            return res.rowcount

    def create(self, product: str, folder: str, policy: str, recursive: bool = True) -> dict[str, Any]:
        """Check the product, policy and folder, and store the batch with its items (runs in a worker)."""
        from iad_agent.scale.folder import find_images

        api.resolve_policy(policy)
        api.product_version(product, self.runtime.settings.workspace)  # unknown product: ProductNotFound
        path = self.runtime.allowed_folder(folder)
        images = find_images(path, recursive=recursive)
        batch = Batch(id=uuid.uuid4().hex, product=product, policy=policy, folder=str(path), status="queued",
                      total=len(images), done=0, failed=0, anomalous=0)
        with self.db.write() as s:
            s.add(batch)
            s.flush()
            s.add_all(BatchItem(batch_id=batch.id, position=i, path=str(p), status="pending") for i, p in enumerate(images))
        return recorder.batch_json(batch)

    async def start(self, batch_id: str) -> None:
        """Run (or resume) a batch in the background (after the images in flight of a cancelled run)."""
        previous = self._tasks.get(batch_id)
        if previous is not None and not previous.done():
            if batch_id not in self._cancel:
                return  # running already
            await asyncio.gather(previous, return_exceptions=True)
        self._cancel.discard(batch_id)
        with self.db.write() as s:
            s.execute(update(Batch).where(Batch.id == batch_id).values(status="running", message=None, finished_at=None,
                                                                        updated_at=utcnow()))
        self._tasks[batch_id] = asyncio.get_running_loop().create_task(self._run(batch_id), name=f"batch-{batch_id}")

    def cancel(self, batch_id: str) -> None:
        self._cancel.add(batch_id)

    def running(self, batch_id: str) -> bool:
        task = self._tasks.get(batch_id)
        return task is not None and not task.done()

    async def shutdown(self) -> None:
        """Stop every batch (they stay resumable) and wait for the images in flight."""
        self._stopping = True
        self._cancel.update(self._tasks)
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self.mark_interrupted()

    async def _run(self, batch_id: str) -> None:
        with self.db.read() as s:
            batch = s.get(Batch, batch_id)
            items = s.execute(select(BatchItem.id, BatchItem.path).where(BatchItem.batch_id == batch_id,
                                                                         BatchItem.status == "pending")
                              .order_by(BatchItem.position)).all()
        queue: asyncio.Queue = asyncio.Queue()
        for item in items:
            queue.put_nowait(item)
        status, message = "done", None
        try:
            await asyncio.gather(*(self._consume(queue, batch_id, batch.product, batch.policy)
                                   for _ in range(self.runtime.settings.batch_workers)))
            if self._stopping:
                status, message = "interrupted", "the server stopped while this batch ran; resume it"
            elif batch_id in self._cancel:
                status, message = "cancelled", "cancelled; resume it to inspect the rest"
        except Exception as exc:  # noqa: BLE001 - a product that vanished, a full disk: stop and say why
            log.exception("batch %s failed", batch_id)
            status, message = "failed", f"{type(exc).__name__}: {exc}"
        except asyncio.CancelledError:
            status, message = "interrupted", "the server stopped while this batch ran; resume it"
            raise
        finally:
            with self.db.write() as s:
                s.execute(update(Batch).where(Batch.id == batch_id).values(
                    status=status, message=message, updated_at=utcnow(),
                    finished_at=utcnow() if status in ("done", "failed") else None))

    async def _consume(self, queue: asyncio.Queue, batch_id: str, product: str, policy: str) -> None:
        while batch_id not in self._cancel:
            try:
                item_id, path = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            await self.runtime.run(self._inspect_item, item_id, Path(path), batch_id, product, policy)

    def _inspect_item(self, item_id: int, path: Path, batch_id: str, product: str, policy: str) -> None:
        try:
            self.runtime.inspect(path, product, policy, str(path), batch_item=item_id, batch_id=batch_id)
        except ImageError as exc:  # an unreadable image fails alone; the batch goes on
            recorder.record_failure(self.db, item_id, batch_id, str(exc))

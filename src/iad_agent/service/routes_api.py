"""The HTTP API under ``/api`` (OpenAPI documentation at ``/docs``) and stored files under ``/blobs``.

Every route is thin: it reads the request, calls :class:`~iad_agent.service.runtime.Runtime`
(in a worker thread) or the database, and shapes the answer. Errors are typed and mapped to
status codes in :mod:`iad_agent.service.app` (404 unknown product, 413 too large, 422 bad
input, 403 folder not allowed, 409 damaged product).
"""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.responses import FileResponse, Response
from pydantic import BaseModel, Field
from sqlalchemy import func, select, text

from iad_agent import api
from iad_agent.service import recorder
from iad_agent.service.db import Batch, BatchItem, Blob, Inspection

router = APIRouter(prefix="/api")
blobs = APIRouter()


def _rt(request: Request):  # noqa: ANN202 - the app's Runtime
    return request.app.state.runtime


def _safe_name(name: str | None) -> str:
    """A file name safe to create: no folders, no leading dot, plain characters."""
    base = re.sub(r"[^A-Za-z0-9._-]+", "_", Path((name or "").replace("\\", "/")).name).lstrip(".")[:100]
    return base or "upload"


def _display_name(name: str | None) -> str:
    return (Path((name or "").replace("\\", "/")).name or "upload")[:200]


async def _save_uploads(request: Request, uploads: list[UploadFile]) -> tuple[Path, list[tuple[Path, str]]]:
    """Write uploads into a fresh temporary folder; ``(folder, [(path, the user's name)])``."""
    tmp = Path(tempfile.mkdtemp(prefix="upload-", dir=request.app.state.tmp_dir))
    saved = []
    for i, upload in enumerate(uploads):
        path = tmp / f"{i:04d}_{_safe_name(upload.filename)}"
        with open(path, "wb") as fh:
            while chunk := await upload.read(1 << 20):
                fh.write(chunk)
        saved.append((path, _display_name(upload.filename)))
    return tmp, saved


# ----------------------------------------------------------------------------- health


@router.get("/health", summary="Liveness: the service answers and its database is reachable (no API key needed)")
def health(request: Request) -> dict[str, Any]:
    with request.app.state.db.read() as s:
        s.execute(text("SELECT 1"))
    settings = request.app.state.settings
    return {"status": "ok", "workers": settings.workers, "auth": settings.api_key is not None}


# ----------------------------------------------------------------------------- products


class ThresholdChange(BaseModel):
    """A new false-alarm rate, or a threshold (translated into the rate that sets it)."""

    fpr: float | None = Field(None, description="false-alarm rate on good parts, 0.001 … 0.5")
    threshold: float | None = Field(None, gt=0, description="an anomaly-score threshold")


@router.get("/products", summary="Registered products with their threshold and false-alarm rate")
async def list_products(request: Request) -> list[dict[str, Any]]:
    rt = _rt(request)
    return await rt.run(rt.list_products)


@router.post("/products", status_code=201, summary="Register a product (or add good images to it)",
             description="Good images are uploaded as `files`, or read from `folder` on the server (inside the "
                         "service's --folder-root). The threshold is set from them alone for `fpr`.")
async def register_product(
    request: Request,
    name: Annotated[str, Form(description="product name: letters, digits, _ - .")],
    files: Annotated[list[UploadFile] | None, File(description="good images")] = None,
    folder: Annotated[str | None, Form(description="a folder of good images on the server")] = None,
    fpr: Annotated[float, Form(description="false-alarm rate the threshold is set for")] = 0.05,
    priors: Annotated[str | None, Form(description='JSON {"good": text, "<defect type>": text}')] = None,
    allow_mixed_sizes: Annotated[bool, Form()] = False,
) -> dict[str, Any]:
    rt = _rt(request)
    if bool(files) == bool(folder):
        raise HTTPException(422, "give good images as files, or a server-side folder (not both)")
    try:
        prior_map = json.loads(priors) if priors else None
    except json.JSONDecodeError as exc:
        raise HTTPException(422, f"priors: not valid JSON ({exc})") from exc
    if prior_map is not None and not (isinstance(prior_map, dict) and all(isinstance(v, str) for v in prior_map.values())):
        raise HTTPException(422, 'priors must be a JSON object of strings {"good": "...", "<defect type>": "..."}')
    if fpr < api.FPR_RANGE[0] or fpr > api.FPR_RANGE[1]:
        raise HTTPException(422, f"fpr must be between {api.FPR_RANGE[0]} and {api.FPR_RANGE[1]}")
    if folder:
        path = await rt.run(rt.allowed_folder, folder)
        return await rt.run(rt.register, name, path, fpr=fpr, priors=prior_map, allow_mixed_sizes=allow_mixed_sizes)
    tmp, saved = await _save_uploads(request, files)
    try:
        return await rt.run(rt.register_uploads, name, saved, fpr=fpr, priors=prior_map,
                            allow_mixed_sizes=allow_mixed_sizes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@router.get("/products/{name}", summary="A product: good images, threshold, false-alarm rate and the threshold curve")
async def product(request: Request, name: str) -> dict[str, Any]:
    rt = _rt(request)
    return await rt.run(rt.details, name)


@router.get("/products/{name}/threshold", summary="What a false-alarm rate or a threshold would mean (nothing is saved)")
async def preview_threshold(request: Request, name: str, fpr: float | None = Query(None, gt=0, lt=1),
                            threshold: float | None = Query(None, gt=0)) -> dict[str, Any]:
    if (fpr is None) == (threshold is None):
        raise HTTPException(422, "give exactly one of fpr or threshold")
    rt = _rt(request)
    return await rt.run(rt.preview, name, fpr, threshold)


@router.patch("/products/{name}", summary="Set the threshold by false-alarm rate (or by threshold)")
async def change_threshold(request: Request, name: str, change: ThresholdChange) -> dict[str, Any]:
    if (change.fpr is None) == (change.threshold is None):
        raise HTTPException(422, "give exactly one of fpr or threshold")
    rt = _rt(request)
    return await rt.run(rt.set_threshold, name, change.fpr, change.threshold)


@router.delete("/products/{name}", status_code=204, summary="Remove a product (its inspections stay in the history)")
async def delete_product(request: Request, name: str) -> Response:
    rt = _rt(request)
    await rt.run(rt.delete, name)
    return Response(status_code=204)


# ----------------------------------------------------------------------------- inspection


@router.post("/inspect", status_code=201, summary="Inspect an uploaded image",
             description="The answer is the `iad inspect --json` object (verdict, score, threshold, box, defect type, "
                         "confidence, reason, tool calls, trace) with `heatmap` as a URL, `urls` of the image, heat map, "
                         "overlay, thumbnail and HTML report, and the record's `id`. It is kept in the history.")
async def inspect(request: Request, file: Annotated[UploadFile, File(description="the image")],
                  product: Annotated[str, Form(description="a registered product")],
                  policy: Annotated[str, Form(description="embedded, knn, embedded-no-<tool>, ...")] = "embedded",
                  ) -> dict[str, Any]:
    rt = _rt(request)
    tmp, [(path, filename)] = await _save_uploads(request, [file])
    try:
        inspection_id = await rt.run(rt.inspect, path, product, policy, filename)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return get_inspection(request, inspection_id)


def _when(value: str | None, end: bool = False) -> datetime | None:
    if not value:
        return None
    try:
        t = datetime.fromisoformat(value)
    except ValueError as exc:
        raise HTTPException(422, f"{value!r}: not an ISO date or date-time (e.g. 2026-05-01 or 2026-05-01T08:00:00Z)") from exc
    if t.tzinfo is not None:
        t = t.astimezone(UTC).replace(tzinfo=None)
    if end and len(value) == 10:  # a date alone: the whole day
        t += timedelta(days=1)
    return t


def history_query(product: str | None, verdict: str | None, since: str | None, until: str | None, batch: str | None):  # noqa: ANN201
    """The filtered ``SELECT`` of the history (shared by the API and the history page)."""
    q = select(Inspection)
    if product:
        q = q.where(Inspection.product == product)
    if verdict == "anomalous":
        q = q.where(Inspection.anomaly_present.is_(True))
    elif verdict == "normal":
        q = q.where(Inspection.anomaly_present.is_(False))
    elif verdict == "none":
        q = q.where(Inspection.anomaly_present.is_(None))
    if (start := _when(since)) is not None:
        q = q.where(Inspection.created_at >= start)
    if (stop := _when(until, end=True)) is not None:
        q = q.where(Inspection.created_at < stop)
    if batch:
        q = q.where(Inspection.batch_id == batch)
    return q


@router.get("/inspections", summary="The history, newest first: filter by product, verdict, date, batch; page through")
def history(request: Request, product: str | None = None, verdict: Literal["anomalous", "normal", "none"] | None = None,
            since: str | None = Query(None, description="from this date / date-time (UTC)"),
            until: str | None = Query(None, description="up to this date (inclusive) / date-time (UTC)"),
            batch: str | None = None, limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0)) -> dict[str, Any]:
    q = history_query(product, verdict, since, until, batch)
    with request.app.state.db.read() as s:
        total = s.scalar(select(func.count()).select_from(q.subquery()))
        rows = s.scalars(q.order_by(Inspection.id.desc()).limit(limit).offset(offset)).all()
        return {"total": total, "limit": limit, "offset": offset, "items": [recorder.inspection_summary(r) for r in rows]}


@router.get("/inspections/{inspection_id}", summary="One inspection: the whole answer with its trace and URLs")
def get_inspection(request: Request, inspection_id: int) -> dict[str, Any]:
    with request.app.state.db.read() as s:
        row = s.get(Inspection, inspection_id)
        if row is None:
            raise HTTPException(404, f"no inspection {inspection_id}")
        return recorder.inspection_json(row)


# ----------------------------------------------------------------------------- batches


class BatchRequest(BaseModel):
    product: str = Field(description="a registered product")
    folder: str = Field(description="a folder of images on the server (inside the service's --folder-root)")
    policy: str = "embedded"
    recursive: bool = True


def _batch(request: Request, batch_id: str) -> dict[str, Any]:
    with request.app.state.db.read() as s:
        batch = s.get(Batch, batch_id)
        if batch is None:
            raise HTTPException(404, f"no batch {batch_id}")
        return recorder.batch_json(batch)


@router.post("/batches", status_code=202, summary="Start a batch over a server-side folder (runs in the background)")
async def create_batch(request: Request, body: BatchRequest) -> dict[str, Any]:
    runner = request.app.state.batches
    created = await _rt(request).run(runner.create, body.product, body.folder, body.policy, body.recursive)
    await runner.start(created["id"])
    return _batch(request, created["id"])


@router.get("/batches", summary="Batches, newest first")
def list_batches(request: Request, limit: int = Query(50, ge=1, le=500)) -> list[dict[str, Any]]:
    with request.app.state.db.read() as s:
        return [recorder.batch_json(b) for b in s.scalars(select(Batch).order_by(Batch.created_at.desc()).limit(limit))]


@router.get("/batches/{batch_id}", summary="A batch's progress")
def get_batch(request: Request, batch_id: str) -> dict[str, Any]:
    return _batch(request, batch_id)


@router.post("/batches/{batch_id}/cancel", summary="Stop a batch after the images in flight (it stays resumable)")
def cancel_batch(request: Request, batch_id: str) -> dict[str, Any]:
    _batch(request, batch_id)
    request.app.state.batches.cancel(batch_id)
    return _batch(request, batch_id)


@router.post("/batches/{batch_id}/resume", summary="Inspect the images of a batch that are not done yet")
async def resume_batch(request: Request, batch_id: str) -> dict[str, Any]:  # async: the batch runs on the event loop
    state = _batch(request, batch_id)
    if state["status"] == "done":
        raise HTTPException(409, f"batch {batch_id} is done; nothing to resume")
    await request.app.state.batches.start(batch_id)
    return _batch(request, batch_id)


@router.get("/batches/{batch_id}/results", summary="One row per image of a batch (JSON, or CSV with format=csv)")
def batch_results(request: Request, batch_id: str, format: Literal["json", "csv"] = "json",  # noqa: A002
                  limit: int = Query(1000, ge=1, le=100_000), offset: int = Query(0, ge=0)) -> Any:
    from iad_agent.scale.folder import FIELDS, result_row

    _batch(request, batch_id)
    with request.app.state.db.read() as s:
        q = (select(BatchItem, Inspection).outerjoin(Inspection, BatchItem.inspection_id == Inspection.id)
             .where(BatchItem.batch_id == batch_id).order_by(BatchItem.position).limit(limit).offset(offset))
        rows = []
        for item, insp in s.execute(q).all():
            row = result_row(item.path, json.loads(insp.result) if insp else None, item.error)
            row.update(status=item.status, inspection_id=item.inspection_id)
            rows.append(row)
    if format == "json":
        return rows
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*FIELDS, "status", "inspection_id"])
    for row in rows:
        writer.writerow([json.dumps(row[k]) if isinstance(row[k], list) else "" if row[k] is None else row[k]
                         for k in (*FIELDS, "status", "inspection_id")])
    return Response(buf.getvalue(), media_type="text/csv",
                    headers={"Content-Disposition": f'attachment; filename="batch-{batch_id}.csv"'})


# ----------------------------------------------------------------------------- stored files


@blobs.get("/blobs/{sha}", include_in_schema=True, summary="A stored image, heat map or report, by content hash")
def blob(request: Request, sha: str) -> FileResponse:
    store = request.app.state.store
    if not store.exists(sha):
        raise HTTPException(404, "no such file")
    with request.app.state.db.read() as s:
        row = s.get(Blob, sha)
    media = row.media_type if row else "application/octet-stream"
    headers = {"Cache-Control": "private, max-age=31536000, immutable", "X-Content-Type-Options": "nosniff",
               # reports are our own HTML; they may show inline images and styles, nothing else
               "Content-Security-Policy": "default-src 'none'; img-src data: 'self'; style-src 'unsafe-inline'"}
    return FileResponse(store.path(sha), media_type=media, headers=headers)

"""Recording an inspection in the history, and reading it back as JSON.

:func:`record` stores the query image, the heat map (the same 8-bit PNG as ``iad inspect``
writes), the overlay with the box, a thumbnail, the self-contained HTML report and every
image a tool returned, each once by content hash, then writes the inspection row (and, in a
batch, the item's state and the batch's counters) in one transaction.

:func:`inspection_json` is the API's answer: the ``iad inspect --json`` object, with
``heatmap`` as a URL, an ``urls`` object (image, heat map, overlay, thumbnail, report), the
URLs of each tool's images in the trace, and the record's id, time and product version.
"""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image
from sqlalchemy import update
from sqlalchemy.dialects.sqlite import insert

from iad_agent.service.db import Batch, BatchItem, Blob, Database, Inspection, utcnow
from iad_agent.service.store import BlobRef, BlobStore

if TYPE_CHECKING:
    from iad_agent.inspector import InspectionResult

_MEDIA = {"PNG": "image/png", "JPEG": "image/jpeg", "BMP": "image/bmp", "TIFF": "image/tiff", "WEBP": "image/webp",
          "GIF": "image/gif"}
THUMB_SIDE = 160


def blob_url(sha: str) -> str:
    return f"/blobs/{sha}"


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)  # lossless; level 1 is several times faster than the default 6
    return buf.getvalue()


def media_type(path: Path) -> str:
    """The media type of an image file, from its content."""
    try:
        with Image.open(path) as img:
            return _MEDIA.get(img.format or "", "application/octet-stream")
    except OSError:
        return "application/octet-stream"


def record(db: Database, store: BlobStore, result: InspectionResult, *, image_path: Path, filename: str,
           product_version: str, policy: str, batch_item: int | None = None, batch_id: str | None = None) -> int:
    """Store one inspection and its files; returns the inspection's id.

    Args:
        image_path: the inspected file (its bytes are stored as they are).
        filename: how the user named the image (the upload's name, or the server-side path).
        batch_item / batch_id: the batch item this inspection completes, if any.
    """
    from iad_agent.report import overlay, render_html, save_heatmap
    from iad_agent.types import Box

    traj, look = result.trajectory, result.episode.look
    refs: list[BlobRef] = [store.put(Path(image_path).read_bytes(), media_type(Path(image_path)))]
    with tempfile.TemporaryDirectory(prefix="iad-heatmap-") as tmp:
        save_heatmap(result, Path(tmp) / "heatmap.png")
        refs.append(store.put((Path(tmp) / "heatmap.png").read_bytes(), "image/png"))
    result.heatmap_path = None
    d = result.to_dict()
    box = Box.from_list(d["box"]) if d["box"] else None
    over = overlay(traj.query_image, result.heatmap, vmax=look.threshold * 1.5, box=box)  # as in the HTML report
    refs.append(store.put(_png(over), "image/png"))
    thumb = over.copy()
    thumb.thumbnail((THUMB_SIDE, THUMB_SIDE))
    refs.append(store.put(_png(thumb), "image/png"))
    refs.append(store.put(render_html(result).encode("utf-8"), "text/html; charset=utf-8"))
    for step, step_d in zip(traj.steps, d["trace"]["steps"]):
        for obs, obs_d in zip(step.observations, step_d["observations"]):
            obs_d["images"] = []
            for j, img in enumerate(obs.images):
                ref = store.put(_png(img), "image/png")
                refs.append(ref)
                caption = obs.image_captions[j] if j < len(obs.image_captions) else ""
                obs_d["images"].append({"blob": ref.sha256, "caption": caption})
    image, heat, over_ref, thumb_ref, report = refs[:5]
    with db.write() as s:
        for ref in {r.sha256: r for r in refs}.values():
            s.execute(insert(Blob).values(sha256=ref.sha256, media_type=ref.media_type, size=ref.size,
                                          created_at=utcnow()).on_conflict_do_nothing())
        row = Inspection(product=d["product"], product_version=product_version, policy=policy, filename=filename,
                         anomaly_present=d["anomaly_present"], score=d["score"], threshold=d["threshold"],
                         confidence=d["confidence"], defect_type=d["defect_type"], stop_reason=d["stop_reason"],
                         elapsed_ms=d["elapsed_ms"], image_sha=image.sha256, heatmap_sha=heat.sha256,
                         overlay_sha=over_ref.sha256, thumb_sha=thumb_ref.sha256, report_sha=report.sha256,
                         result=json.dumps(d, ensure_ascii=False), batch_id=batch_id, created_at=utcnow())
        s.add(row)
        s.flush()
        if batch_item is not None:
            s.execute(update(BatchItem).where(BatchItem.id == batch_item).values(status="done", inspection_id=row.id))
            s.execute(update(Batch).where(Batch.id == batch_id).values(
                done=Batch.done + 1, anomalous=Batch.anomalous + (1 if d["anomaly_present"] else 0), updated_at=utcnow()))
        return row.id


def record_failure(db: Database, batch_item: int, batch_id: str, error: str) -> None:
    """Mark a batch item failed (an unreadable image) and count it, in one transaction."""
    with db.write() as s:
        s.execute(update(BatchItem).where(BatchItem.id == batch_item).values(status="failed", error=error))
        s.execute(update(Batch).where(Batch.id == batch_id).values(failed=Batch.failed + 1, updated_at=utcnow()))


def _iso(value: Any) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value is not None else None


def _urls(row: Inspection) -> dict[str, str]:
    return {"self": f"/api/inspections/{row.id}", "page": f"/inspections/{row.id}", "image": blob_url(row.image_sha),
            "heatmap": blob_url(row.heatmap_sha), "overlay": blob_url(row.overlay_sha),
            "thumbnail": blob_url(row.thumb_sha), "report": blob_url(row.report_sha)}


def inspection_json(row: Inspection) -> dict[str, Any]:
    """The full answer of one stored inspection (``iad inspect --json`` + URLs + record fields)."""
    d = json.loads(row.result)
    d["heatmap"] = blob_url(row.heatmap_sha)
    for step in d["trace"]["steps"]:
        for obs in step["observations"]:
            obs["images"] = [{"url": blob_url(i["blob"]), "caption": i["caption"]} for i in obs.get("images", [])]
    d.update(id=row.id, created_at=_iso(row.created_at), filename=row.filename, product_version=row.product_version,
             batch_id=row.batch_id, urls=_urls(row))
    return d


def inspection_summary(row: Inspection) -> dict[str, Any]:
    """One history row: the verdict and its numbers, without the trace."""
    return {"id": row.id, "created_at": _iso(row.created_at), "product": row.product, "product_version": row.product_version,
            "policy": row.policy, "filename": row.filename, "anomaly_present": row.anomaly_present, "score": row.score,
            "threshold": row.threshold, "confidence": row.confidence, "defect_type": row.defect_type,
            "stop_reason": row.stop_reason, "elapsed_ms": row.elapsed_ms, "batch_id": row.batch_id, "urls": _urls(row)}


def batch_json(batch: Batch) -> dict[str, Any]:
    processed = batch.done + batch.failed
    return {"id": batch.id, "product": batch.product, "policy": batch.policy, "folder": batch.folder, "status": batch.status,
            "total": batch.total, "done": batch.done, "failed": batch.failed, "anomalous": batch.anomalous,
            "processed": processed, "progress": round(processed / batch.total, 4) if batch.total else 1.0,
            "message": batch.message, "created_at": _iso(batch.created_at), "updated_at": _iso(batch.updated_at),
            "finished_at": _iso(batch.finished_at), "urls": {"self": f"/api/batches/{batch.id}",
                                                            "results": f"/api/batches/{batch.id}/results",
                                                            "history": f"/history?batch={batch.id}"}}

"""The history database: SQLite through SQLAlchemy 2, schema migrations with Alembic.

Tables:

* ``blobs`` — stored files (query images, heat maps, overlays, thumbnails, reports, tool
  images), one row per content hash; the bytes live in :class:`~iad_agent.service.store.BlobStore`.
* ``inspections`` — every inspection: the answer (verdict, score, threshold, box, defect
  type, confidence), the whole ``iad inspect --json`` object with its trace, the product
  version and policy, and the hashes of its image, heat map, overlay, thumbnail and report.
* ``batches`` / ``batch_items`` — batch jobs over a server-side folder and each image's state;
  an item is marked done in the same transaction that records its inspection, so a crash
  never loses or duplicates one.

SQLite runs in WAL mode (readers never wait for the writer); writes in this process are
serialised by a lock, so concurrent requests never see "database is locked".
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint, create_engine, event
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

MIGRATIONS = Path(__file__).with_name("migrations")


def utcnow() -> datetime:
    """Now, in UTC, without tzinfo (SQLite stores no time zones; everything here is UTC)."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Blob(Base):
    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    media_type: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Batch(Base):
    __tablename__ = "batches"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    product: Mapped[str] = mapped_column(String(64))
    policy: Mapped[str] = mapped_column(String(64))
    folder: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued running done cancelled interrupted failed
    total: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    anomalous: Mapped[int] = mapped_column(Integer, default=0)
    message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Inspection(Base):
    __tablename__ = "inspections"
    __table_args__ = (Index("ix_inspections_product_created", "product", "created_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    product: Mapped[str] = mapped_column(String(64))
    product_version: Mapped[str] = mapped_column(String(32))
    policy: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(Text)
    anomaly_present: Mapped[bool | None] = mapped_column(Boolean, nullable=True, index=True)
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float | None] = mapped_column(Float, nullable=True)
    defect_type: Mapped[str | None] = mapped_column(String(128), nullable=True)
    stop_reason: Mapped[str | None] = mapped_column(String(16), nullable=True)
    elapsed_ms: Mapped[float] = mapped_column(Float)
    image_sha: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    heatmap_sha: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    overlay_sha: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    thumb_sha: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    report_sha: Mapped[str] = mapped_column(ForeignKey("blobs.sha256"))
    result: Mapped[str] = mapped_column(Text)  # the `iad inspect --json` object; tool images as blob hashes
    batch_id: Mapped[str | None] = mapped_column(ForeignKey("batches.id"), nullable=True, index=True)


class BatchItem(Base):
    __tablename__ = "batch_items"
    __table_args__ = (UniqueConstraint("batch_id", "position", name="uq_batch_items_position"),
                      Index("ix_batch_items_batch_status", "batch_id", "status"))

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    batch_id: Mapped[str] = mapped_column(ForeignKey("batches.id"))
    position: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending done failed
    inspection_id: Mapped[int | None] = mapped_column(ForeignKey("inspections.id"), nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Database:
    """The engine, sessions and migrations of one history database.

    Args:
        url: a SQLAlchemy URL (``sqlite:///path/history.sqlite``); the folder is created.
    """

    def __init__(self, url: str) -> None:
        if url.startswith("sqlite:///"):
            Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.url = url
        self.engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, pool_size=10,
                                    max_overflow=40)
        event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = threading.Lock()

    def migrate(self) -> None:
        """Bring the schema up to date (Alembic ``upgrade head``); a new database is created."""
        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with self.engine.begin() as connection:
            cfg.attributes["connection"] = connection
            command.upgrade(cfg, "head")

    def read(self) -> Session:
        """A session for reading (``with db.read() as s: ...``)."""
        return self._sessions()

    @contextmanager
    def write(self) -> Iterator[Session]:
        """One transaction: committed when the block ends, rolled back if it raises."""
        with self._write_lock, self._sessions() as session, session.begin():
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection, _record) -> None:  # noqa: ANN001 - DBAPI connection
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: a killed process loses nothing committed
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()

"""Alembic environment of the history database (run by :meth:`iad_agent.service.db.Database.migrate`).

The caller passes an open connection in ``config.attributes["connection"]``; run by hand,
``sqlalchemy.url`` in the config is used instead. ``render_as_batch`` lets later migrations
alter SQLite tables (copy-and-move).
"""

from alembic import context
from sqlalchemy import create_engine

from iad_agent.service.db import Base

config = context.config
connection = config.attributes.get("connection")


def _run(conn) -> None:  # noqa: ANN001 - a SQLAlchemy connection
    context.configure(connection=conn, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


if connection is not None:
    _run(connection)
else:
    with create_engine(config.get_main_option("sqlalchemy.url")).connect() as conn:
        _run(conn)
        conn.commit()

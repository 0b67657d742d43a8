"""The inspection service: HTTP API, history database and web UI in one FastAPI app (``iad serve``).

It owns no inspection logic (``ARCHITECTURE.md``): inspection, registration and thresholds are
:mod:`iad_agent.api`. What lives here:

* :mod:`.settings` — what ``iad serve`` configures (workspace, data folder, API key, limits).
* :mod:`.db` — the history in SQLite through SQLAlchemy 2; Alembic migrations (``migrations/``,
  shipped with the package) are applied on start.
* :mod:`.store` — images, heat maps and reports stored once, by content hash.
* :mod:`.runtime` — the worker pool (CPU-bound work off the event loop), loaded products keyed
  by product version, and recording each inspection in one transaction.
* :mod:`.jobs` — batch jobs over a server-side folder: progress, cancel, resume after a crash.
* :mod:`.routes_api`, :mod:`.routes_ui`, :mod:`.app` — routes, the UI pages (Jinja2 templates +
  static files, no build step) and the app factory :func:`.app.create_app`.

Needs ``pip install 'iad-agent[serve]'``.
"""

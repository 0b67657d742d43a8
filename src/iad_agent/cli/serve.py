"""``iad serve``: the inspection service (HTTP API + web UI + history) with uvicorn."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from iad_agent.cli import app, console, fail


@app.command()
def serve(
    workspace: Path = typer.Option(None, "--workspace", help="Folder of registered products (default $IAD_WORKSPACE, else ~/.iad)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface; set an API key then)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535),
    data_dir: Path = typer.Option(None, "--data-dir", help="History database and stored files (default <workspace>/service)."),
    workers: int = typer.Option(None, "--workers", min=1, help="Worker threads for inspections (default: one per core, at most 4)."),
    folder_root: list[Path] = typer.Option([], "--folder-root", help="Server-side folders that registrations and batches may read "
                                           "(repeatable; default: the current folder)."),
    api_key_env: str = typer.Option("IAD_API_KEY", "--api-key-env", help="Environment variable holding the API key; "
                                    "when it is set, everything but /api/health needs the key."),
    max_upload_mb: float = typer.Option(64, "--max-upload-mb", min=0.001, help="Largest request body, in MiB (413 above)."),
    max_pixels: int = typer.Option(40_000_000, "--max-pixels", min=64, help="Largest image, width × height (413 above)."),
    log_level: str = typer.Option("warning", "--log-level", help="uvicorn's log level: debug, info, warning, error."),
) -> None:
    """Serve the HTTP API (docs at /docs), the web UI and the inspection history."""
    from iad_agent.errors import MissingExtra
    from iad_agent.extras import require

    try:
        require("serve", "fastapi", "uvicorn", "sqlalchemy", "alembic", "python_multipart", "fastapi_offline")
    except MissingExtra as exc:
        fail(str(exc))
    import uvicorn

    from iad_agent.service.app import create_app
    from iad_agent.service.settings import Settings

    key = os.environ.get(api_key_env) or None
    defaults = {} if workers is None else {"workers": workers}
    # as iad_agent.product.Workspace resolves it (not imported: it loads torch, and serve starts without it)
    root = Path(workspace or os.environ.get("IAD_WORKSPACE") or Path.home() / ".iad").expanduser()
    settings = Settings(workspace=root, data_dir=data_dir, api_key=key,
                        max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_pixels=max_pixels,
                        folder_roots=tuple(p.resolve() for p in folder_root) or (Path.cwd().resolve(),), **defaults)
    try:
        service = create_app(settings)
    except OSError as exc:
        fail(f"{settings.data}: cannot open the history there ({exc})", 3)
    if key is None and host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/] listening on {host} without an API key: anyone who can reach it can use it "
                      f"(set ${api_key_env})", highlight=False)
    console.print(f"iad serve: http://{host}:{port}  (API docs: /docs)  workspace {settings.workspace}, "
                  f"history {settings.data}, {settings.workers} workers"
                  + (", API key required" if key else ""), highlight=False)
    uvicorn.run(service, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)

"""The FastAPI app: API, stored files and web UI, with the API key gate and the error mapping.

:func:`create_app` opens (and migrates) the history database, starts the worker pool and
returns the app; ``iad serve`` runs it with uvicorn. The OpenAPI documentation (``/docs``)
is served from files shipped with ``fastapi-offline``, so it works without internet.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from iad_agent import api
from iad_agent.imageio import ImageError
from iad_agent.scale.folder import BatchError
from iad_agent.service import routes_api, routes_ui
from iad_agent.service.db import Database
from iad_agent.service.jobs import BatchRunner
from iad_agent.service.runtime import FolderNotAllowed, ImageTooLarge, Runtime
from iad_agent.service.settings import Settings
from iad_agent.service.store import BlobStore

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
COOKIE = "iad_session"

#: Typed errors of the API and the service → HTTP status (the message is the ``detail``).
STATUS = [(api.ProductNotFound, 404), (FolderNotAllowed, 403), (ImageTooLarge, 413), (ImageError, 422),
          (api.RegistrationError, 422), (BatchError, 422), (api.PolicyConfigError, 422), (api.ProductError, 409),
          (api.MissingExtra, 501)]


def session_token(key: str) -> str:
    """What the UI's login cookie holds: a hash of the key, never the key itself."""
    return hashlib.sha256(b"iad-session:" + key.encode()).hexdigest()


class APIKeyGate:
    """Every request but health, static files and the login page must carry the API key.

    Accepted as ``X-API-Key: KEY``, ``Authorization: Bearer KEY``, or the UI's login cookie.
    API and file requests without it get 401; pages redirect to ``/login``.
    """

    OPEN = ("/api/health", "/static/", "/login", "/favicon.ico")

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app, self.key, self.token = app, key, session_token(key)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path.startswith(self.OPEN):
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        given = headers.get("x-api-key") or headers.get("authorization", "").removeprefix("Bearer ").strip()
        cookie = _cookie(headers.get("cookie", ""), COOKIE)
        if (given and secrets.compare_digest(given.encode(), self.key.encode())) or \
                (cookie and secrets.compare_digest(cookie.encode(), self.token.encode())):
            return await self.app(scope, receive, send)
        wants_page = "text/html" in headers.get("accept", "") and not path.startswith(("/api/", "/blobs/"))
        if wants_page:
            target = path + ("?" + scope["query_string"].decode() if scope.get("query_string") else "")
            response = RedirectResponse(f"/login?next={quote(target)}", status_code=303)
        else:
            response = JSONResponse({"detail": "API key required: send it as the X-API-Key header"}, status_code=401,
                                    headers={"WWW-Authenticate": "Bearer"})
        await response(scope, receive, send)


class BodySizeGate:
    """413 with a clear message for a request body over the limit.

    A body whose declared ``Content-Length`` is too large is refused before it is read; one
    sent without a length is counted as it streams and cut off at the limit (an
    ``HTTPException``, so the body parser passes it on as a 413).
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    def _message(self, size: str) -> str:
        return f"request body is {size} bytes, above this service's limit of {self.limit:,} bytes (iad serve --max-upload-mb)"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.limit:
            response = JSONResponse({"detail": self._message(f"{int(declared):,}")}, status_code=413)
            return await response(scope, receive, send)
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, self._message(f"more than {self.limit:,}"))
            return message

        await self.app(scope, counted, send)


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


def create_app(settings: Settings) -> FastAPI:
    """The service for ``settings``: database migrated, workers ready, batches left running marked interrupted."""
    db = Database(settings.database_url)
    db.migrate()
    store = BlobStore(settings.data / "blobs")
    tmp_dir = settings.data / "tmp"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    runtime = Runtime(settings, db, store)
    batches = BatchRunner(runtime)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202
        # load torch and the backbone in the background once the server answers (importing torch while it
        # starts would hold the interpreter and slow the start), so the first inspection need not wait
        warming = asyncio.get_running_loop().call_later(1.0, runtime.warm_up)
        interrupted = batches.mark_interrupted()
        if interrupted:
            log.warning("%d batch(es) were running when the server stopped; resume them from /batches", interrupted)
        try:
            yield
        finally:
            warming.cancel()
            await batches.shutdown()
            runtime.close()
            db.dispose()

    app = FastAPIOffline(title="iad-agent inspection service", version="1", lifespan=lifespan,
                         description="Register products from good images, inspect images, keep every inspection, "
                                     "run batches over server-side folders. The answers are those of `iad inspect --json`.")
    app.state.settings, app.state.db, app.state.store = settings, db, store
    app.state.runtime, app.state.batches, app.state.tmp_dir = runtime, batches, tmp_dir

    for exc_type, status in STATUS:
        app.add_exception_handler(exc_type, _handler(status))
    app.add_middleware(BodySizeGate, limit=settings.max_upload_bytes)
    if settings.api_key:  # added last: it runs first, so nothing is read for a request without the key
        app.add_middleware(APIKeyGate, key=settings.api_key)
    app.include_router(routes_api.router)
    app.include_router(routes_api.blobs)
    app.include_router(routes_ui.router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return app


def _handler(status: int):  # noqa: ANN202
    async def handle(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status)

    return handle

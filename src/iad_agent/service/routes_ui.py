"""The web UI's pages (Jinja2 templates; the little interaction there is lives in ``static/app.js``).

Pages: inspect (``/``), products (``/products``, ``/products/NAME``), history (``/history``),
one inspection (``/inspections/ID``), batches (``/batches``) and, when an API key is set,
``/login``. Pages read through the same runtime and queries as the API; the browser talks to
the API for every action.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import APIRouter, Form, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import func, select

from iad_agent import api
from iad_agent.service import recorder
from iad_agent.service.db import Batch, Inspection

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))
PAGE_SIZE = 25


def _page(request: Request, name: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    return templates.TemplateResponse(request, name, {"auth": request.app.state.settings.api_key is not None, **context},
                                      status_code=status_code)


def _product_names(request: Request) -> list[str]:
    return api.list_products(request.app.state.settings.workspace)


@router.get("/", response_class=HTMLResponse)
def inspect_page(request: Request, product: str | None = None) -> HTMLResponse:
    return _page(request, "inspect.html", page="inspect", products=_product_names(request), selected=product)


@router.get("/products", response_class=HTMLResponse)
async def products_page(request: Request) -> HTMLResponse:
    rt = request.app.state.runtime
    return _page(request, "products.html", page="products", products=await rt.run(rt.list_products),
                 folders=[str(r) for r in request.app.state.settings.folder_roots])


@router.get("/products/{name}", response_class=HTMLResponse)
async def product_page(request: Request, name: str) -> HTMLResponse:
    rt = request.app.state.runtime
    return _page(request, "product.html", page="product", product=await rt.run(rt.details, name))


@router.get("/history", response_class=HTMLResponse)
def history_page(request: Request, product: str | None = None, verdict: str | None = None, since: str | None = None,
                 until: str | None = None, batch: str | None = None, page: int = 1) -> HTMLResponse:
    from iad_agent.service.routes_api import history_query

    verdict = verdict if verdict in ("anomalous", "normal", "none") else None
    page = max(1, page)
    q = history_query(product, verdict, since, until, batch)
    with request.app.state.db.read() as s:
        total = s.scalar(select(func.count()).select_from(q.subquery()))
        rows = s.scalars(q.order_by(Inspection.id.desc()).limit(PAGE_SIZE).offset((page - 1) * PAGE_SIZE)).all()
        items = [recorder.inspection_summary(r) for r in rows]
    filters = {k: v for k, v in {"product": product, "verdict": verdict, "since": since, "until": until,
                                 "batch": batch}.items() if v}
    pages = max(1, -(-total // PAGE_SIZE))
    link = lambda p: "/history?" + urlencode({**filters, "page": p})  # noqa: E731
    return _page(request, "history.html", page="history", items=items, total=total, filters=filters,
                 products=_product_names(request), current=page, pages=pages,
                 prev_url=link(page - 1) if page > 1 else None, next_url=link(page + 1) if page < pages else None)


@router.get("/inspections/{inspection_id}", response_class=HTMLResponse)
def inspection_page(request: Request, inspection_id: int) -> HTMLResponse:
    with request.app.state.db.read() as s:
        row = s.get(Inspection, inspection_id)
        if row is None:
            raise HTTPException(404, f"no inspection {inspection_id}")
        data = recorder.inspection_json(row)
    return _page(request, "inspection.html", page="inspection", inspection=data)


@router.get("/batches", response_class=HTMLResponse)
def batches_page(request: Request) -> HTMLResponse:
    with request.app.state.db.read() as s:
        batches = [recorder.batch_json(b) for b in s.scalars(select(Batch).order_by(Batch.created_at.desc()).limit(50))]
    return _page(request, "batches.html", page="batches", batches=batches, products=_product_names(request),
                 folders=[str(r) for r in request.app.state.settings.folder_roots])


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str = "/") -> HTMLResponse:  # noqa: A002
    return _page(request, "login.html", page="login", next=next, error=None)


@router.post("/login", response_model=None)
def login(request: Request, key: str = Form(...), next: str = Form("/")) -> Response:  # noqa: A002
    from iad_agent.service.app import COOKIE, session_token

    expected = request.app.state.settings.api_key
    if expected is None or not secrets.compare_digest(key.encode(), expected.encode()):
        return _page(request, "login.html", 401, page="login", next=next, error="That key is not the service's API key.")
    target = next if next.startswith("/") and not next.startswith("//") else "/"
    response = RedirectResponse(target, status_code=303)
    response.set_cookie(COOKIE, session_token(expected), httponly=True, samesite="strict")
    return response

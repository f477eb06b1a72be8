"""The search page and the API's own documentation page, both served from the package: nothing from a CDN,
so they work offline and under the page's content security policy."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, HTMLResponse

STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
_METHODS = ("get", "post", "put", "delete")


def _parameters(operation: dict[str, Any]) -> str:
    rows = [
        f"<li><code>{escape(p['name'])}</code> ({escape(p['in'])}{', required' if p.get('required') else ''})"
        f"{': ' + escape(p['description']) if p.get('description') else ''}</li>"
        for p in operation.get("parameters", [])
    ]
    if "requestBody" in operation:
        rows.append("<li>a multipart form upload (<code>file</code>)</li>")
    return f"<ul>{''.join(rows)}</ul>" if rows else ""


def docs_page(schema: dict[str, Any]) -> str:
    """The endpoints of an OpenAPI schema as one plain HTML page: method, path, summary, parameters."""
    sections = []
    for path, item in schema.get("paths", {}).items():
        for method in _METHODS:
            if method in item:
                operation = item[method]
                sections.append(
                    f"<section class='endpoint'><h2><code>{method.upper()} {escape(path)}</code></h2>"
                    f"<p>{escape(operation.get('description') or operation.get('summary', ''))}</p>"
                    f"{_parameters(operation)}</section>"
                )
    title = escape(schema.get("info", {}).get("title", "API"))
    return (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title} API</title>"
        "<link rel='stylesheet' href='/static/style.css'></head><body><main class='docs'>"
        f"<h1>{title} API</h1><p>{escape(schema.get('info', {}).get('description', ''))} "
        "The machine-readable schema: <a href='/openapi.json'>/openapi.json</a>; the search page: "
        f"<a href='/'>/</a>.</p>{''.join(sections)}</main></body></html>"
    )


def router() -> APIRouter:
    pages = APIRouter(include_in_schema=False)

    @pages.get("/")
    def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html")

    @pages.get("/docs", response_class=HTMLResponse)
    def docs(request: Request) -> HTMLResponse:
        return HTMLResponse(docs_page(request.app.openapi()))

    return pages

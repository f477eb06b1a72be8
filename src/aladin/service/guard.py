"""The one ASGI middleware in front of every request: Host check, upload size check, a full model queue,
hardening headers.

Plain ASGI rather than `@app.middleware`, which costs every request (503s included) more.
"""

from __future__ import annotations

from collections.abc import Callable

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

#: Room for the multipart envelope around an upload when checking Content-Length against the byte limit.
MULTIPART_SLACK = 16 * 1024
#: Every HTML page loads only its own scripts, styles and images, runs no inline script and cannot be framed.
PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
_ALWAYS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY")]
_HTML = [(b"content-security-policy", PAGE_POLICY.encode())]
#: The endpoints that run the model (exact paths: "/api/searches" is a 404, not a refusal): refused here,
#: unparsed, while its queue is full.
MODEL_PATHS = frozenset({"/api/search", "/api/search/image", "/api/explain"})


def busy_response(queue_size: int) -> JSONResponse:
    """The 503 of a full model queue."""
    detail = f"busy: {queue_size} searches are already queued; retry shortly"
    return JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": "1"})


def too_big(size: int, limit: int) -> str:
    return f"upload of {size:,} bytes is over the limit of {limit:,}"


def host_name(header: bytes) -> str:
    """The name of a Host header, lower case, without its port ("[::1]:8000" → "[::1]")."""
    host = header.decode("latin-1").strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class RequestGuard:
    """Refuses a request whose Host is not one of `host_names` (DNS rebinding: a page on a rebound name would
    otherwise read the photos), an upload from its Content-Length before its body is read, a model call while
    `turn_away()` says the model queue is full (a 503 costing no parsing, validation or routing: under overload
    the refusals are most of the requests, and their cost on the event loop delayed both them and the model
    thread); adds nosniff and frame protection to every response and the content security policy to HTML ones."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        host_names: frozenset[str] | None,
        turn_away: Callable[[], bool],
        busy: JSONResponse,
    ):
        self.app = app
        self.max_bytes = max_bytes
        self.host_names = host_names
        self.turn_away = turn_away
        self.busy = busy

    def refusal(self, scope: Scope) -> JSONResponse | None:
        headers = dict(scope["headers"])
        if self.host_names is not None:
            name = host_name(headers.get(b"host", b""))
            if name not in self.host_names:
                detail = f"Host {name!r} is not served here (start the server with --allowed-hosts {name} to allow it)"
                return JSONResponse({"detail": detail}, status_code=400)
        if scope["method"] == "POST":
            length = headers.get(b"content-length", b"")
            if not length.isdigit():
                return JSONResponse({"detail": "uploads need a Content-Length header"}, status_code=411)
            if int(length) > self.max_bytes + MULTIPART_SLACK:
                return JSONResponse({"detail": too_big(int(length), self.max_bytes)}, status_code=413)
        if scope["path"] in MODEL_PATHS and self.turn_away():
            return self.busy
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_hardened(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [*message.get("headers", []), *_ALWAYS]
                if dict(headers).get(b"content-type", b"").startswith(b"text/html"):
                    headers.extend(_HTML)
                message["headers"] = headers
            await send(message)

        refusal = self.refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send_hardened)
            return
        await self.app(scope, receive, send_hardened)

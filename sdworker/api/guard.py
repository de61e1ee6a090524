"""The HTTP edge: one pure-ASGI middleware, outermost, that decides what may reach the app at all.

In order, for every HTTP request:

1. ``Host`` must be an allowed host (DNS rebinding: a hostile name that resolves to 127.0.0.1 makes
   the browser treat our service as that site's own). Allowed: ``--allowed-hosts`` (``*`` = any,
   ``*.example.com`` = subdomains); by default the loopback names plus the bound host and the host of
   ``--public-url``; bound to every interface (``0.0.0.0``/``::``) with no list, any host (API keys
   are required there; ``check_exposure``). Else ``400 host_not_allowed``.
2. ``Origin``, when sent, must be this service's own (same host and port as ``Host``, or
   ``--public-url``) or a listed CORS origin. Else ``403 origin_not_allowed``: a hostile page cannot
   even send a body-less POST (a cancel) that it could not read the answer of.
3. A CORS preflight from a listed origin is answered here (204); CORS headers are added to every
   response to a listed origin, errors included (a browser app must be able to read a 413).
4. ``HEAD`` is served as ``GET`` without the body (FastAPI routes declare GET only).
5. A request with a body must be ``application/json`` or ``multipart/form-data``: ``415
   unsupported_media_type`` otherwise, so no "simple" cross-site form or ``text/plain`` POST is
   parsed as JSON (the CVE-2021-32677 class). A compressed body (``Content-Encoding``) is ``400
   invalid_json``: we do not inflate bodies (a zip bomb would pass the size limit).
6. An exception that escapes the app is logged once (one bounded traceback, the path without its
   query string) and answered ``500 internal_error`` - with CORS headers, and without uvicorn logging
   it a second time.

Every refusal has the service's JSON error shape (``api/errors.py``).
"""

from __future__ import annotations

import fnmatch
import logging
import traceback
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdworker.api.errors import error_response
from sdworker.settings import Settings

log = logging.getLogger("sdworker.api")

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
WILDCARD_BINDS = ("0.0.0.0", "::", "[::]", "")
BODY_TYPES = ("application/json", "multipart/form-data")
CORS_METHODS = "GET, HEAD, POST, DELETE, OPTIONS"
CORS_EXPOSE = "Retry-After, Location, Content-Length"
MAX_TRACEBACK_CHARS = 8000
MAX_LOGGED_PATH = 200


def host_patterns(settings: Settings) -> tuple[str, ...]:
    """The allowed ``Host`` names (without port) for these settings; ``("*",)`` = any."""
    if settings.allowed_hosts:
        return settings.allowed_hosts
    if settings.host in WILDCARD_BINDS:
        return ("*",)
    bound = f"[{settings.host}]" if ":" in settings.host and not settings.host.startswith("[") else settings.host
    public = urlsplit(settings.public_url).netloc.rpartition("@")[2] if settings.public_url else ""
    names = [*LOOPBACK_NAMES, bound.lower()]
    if public:
        names.append(_strip_port(public.lower()))
    return tuple(dict.fromkeys(names))


def _strip_port(host: str) -> str:
    if host.startswith("["):
        return host.partition("]")[0] + "]"
    return host.partition(":")[0]


class EdgeGuard:
    """See the module docstring; built from ``Settings`` by ``install_edge`` in ``api/edge.py``."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.hosts = host_patterns(settings)
        self.any_host = "*" in self.hosts
        self.cors_any = "*" in settings.cors_origins
        self.cors_origins = frozenset(settings.cors_origins)
        self.public_origin = _origin_of(settings.public_url) if settings.public_url else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        host = headers.get("host", "")
        if not self._host_allowed(host):
            shown = host if len(host) <= 100 else host[:100] + "..."
            await _refuse(scope, receive, send, 400, "host_not_allowed",
                          f"Host {shown!r} is not served here (see --allowed-hosts)")
            return
        origin = headers.get("origin")
        cors = origin is not None and self._cors_allowed(origin)
        if origin is not None and not cors and not self._same_origin(origin, host):
            shown = origin if len(origin) <= 100 else origin[:100] + "..."
            await _refuse(scope, receive, send, 403, "origin_not_allowed",
                          f"Origin {shown!r} may not call this service (see --cors-origins)")
            return
        cors_headers = self._cors_headers(origin) if cors and origin is not None else []
        if cors and scope["method"] == "OPTIONS" and "access-control-request-method" in headers:
            await self._preflight(scope, receive, send, headers, cors_headers)
            return
        send = _with_headers(send, cors_headers) if cors_headers else send
        if _has_body(headers):
            problem = _body_problem(headers)
            if problem is not None:
                status, code, message = problem
                await _refuse(scope, receive, send, status, code, message, field="body")
                return
        if scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
            send = _without_body(send)
        await self._run(scope, receive, send)

    async def _run(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:  # our bug: log it once, answer 500, keep serving
            _log_internal_error(scope, exc)
            if not started:
                response = error_response(
                    "internal_error", "internal error; it has been logged", 500, path=scope.get("path", "")
                )
                await response(scope, receive, send)

    def _host_allowed(self, host: str) -> bool:
        if self.any_host:
            return True
        name = _strip_port(host.strip().lower())
        if not name:
            return False
        return any(name == pattern or (pattern.startswith("*.") and fnmatch.fnmatchcase(name, pattern))
                   for pattern in self.hosts)

    def _cors_allowed(self, origin: str) -> bool:
        return self.cors_any or origin.lower().rstrip("/") in self.cors_origins

    def _same_origin(self, origin: str, host: str) -> bool:
        own = _origin_of(origin)
        if own is None:
            return False
        return own.partition("://")[2] == host.strip().lower() or own == self.public_origin

    def _cors_headers(self, origin: str) -> list[tuple[bytes, bytes]]:
        allow = b"*" if self.cors_any else origin.encode("latin-1")
        return [
            (b"access-control-allow-origin", allow),
            (b"access-control-expose-headers", CORS_EXPOSE.encode()),
            (b"vary", b"Origin"),
        ]

    async def _preflight(
        self, scope: Scope, receive: Receive, send: Send, headers: Headers, cors_headers: list[tuple[bytes, bytes]]
    ) -> None:
        requested = headers.get("access-control-request-headers", "")
        extra = [
            (b"access-control-allow-methods", CORS_METHODS.encode()),
            (b"access-control-allow-headers", requested.encode("latin-1") if requested else b"content-type"),
            (b"access-control-max-age", b"600"),
            (b"content-length", b"0"),
        ]
        await send({"type": "http.response.start", "status": 204, "headers": cors_headers + extra})
        await send({"type": "http.response.body", "body": b""})


def _origin_of(url: str) -> str | None:
    parts = urlsplit(url.strip().lower())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    netloc = parts.netloc.rpartition("@")[2]
    default = {"http": ":80", "https": ":443"}[parts.scheme]
    return f"{parts.scheme}://{netloc.removesuffix(default)}"


def _has_body(headers: Headers) -> bool:
    length = headers.get("content-length")
    if length is not None:
        return length.strip() != "0"
    return "transfer-encoding" in headers


def _body_problem(headers: Headers) -> tuple[int, str, str] | None:
    media_type = headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type not in BODY_TYPES:
        shown = media_type[:60] or "none"
        return 415, "unsupported_media_type", f"body: Content-Type {shown!r} is not accepted; send application/json"
    encoding = headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        return 400, "invalid_json", f"body: Content-Encoding {encoding[:40]!r} is not accepted; send plain JSON"
    return None


def _with_headers(send: Send, extra: Iterable[tuple[bytes, bytes]]) -> Send:
    extra = list(extra)

    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            names = {name for name, _ in extra}
            kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
            message = {**message, "headers": kept + extra}
        await send(message)

    return wrapped


def _without_body(send: Send) -> Send:
    """The GET response's status and headers (Content-Length included, as HTTP wants for HEAD), no body."""
    finished = False

    async def wrapped(message: Message) -> None:
        nonlocal finished
        if message["type"] != "http.response.body":
            await send(message)
        elif not finished:
            finished = True
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        # later body chunks (a stream) are dropped; the app ends when the client goes

    return wrapped


async def _refuse(
    scope: Scope, receive: Receive, send: Send, status: int, code: str, message: str, field: str | None = None
) -> None:
    response = error_response(code, message, status, field, path=scope.get("path", ""))
    response.headers["Connection"] = "close"
    await response(scope, receive, send)


def _log_internal_error(scope: Scope, exc: BaseException) -> None:
    """One log record per 500: method, path (no query string: it may hold tokens), bounded traceback."""
    path = str(scope.get("path", ""))
    if len(path) > MAX_LOGGED_PATH:
        path = path[:MAX_LOGGED_PATH] + "..."
    lines = [line if len(line) <= 500 else line[:500] + "...\n" for line in traceback.format_exception(exc)]
    text = "".join(lines)
    if len(text) > MAX_TRACEBACK_CHARS:
        cut = len(text) - MAX_TRACEBACK_CHARS
        text = f"{text[:1000]}... ({cut} characters cut) ...{text[-(MAX_TRACEBACK_CHARS - 1000):]}"
    log.error("unhandled error on %s %s\n%s", scope.get("method"), path, text.rstrip())

"""Errors to JSON, in one place. Every error body has one shape::

    {"error": {"code": "...", "message": "...", "field": "..."}, "code": "...", "message": "..."}

(``field`` only when one field is to blame; the top-level copies of ``code``/``message`` serve
clients that read a flat error). ``SdworkerError`` maps by its own ``code``/``http_status``;
pydantic's validation errors become 422 ``invalid_request`` naming the field, the value and the
allowed range; malformed JSON (also not UTF-8: UTF-16/32 bodies are refused, a UTF-8 BOM is ignored) is 400
``invalid_json``; a body above ``max_body_bytes`` is 413
``body_too_large`` (checked on Content-Length and on the bytes actually received); a 405 names in
``Allow`` every method of the path. Anything else is our bug: ``api/guard.py`` logs it once with a
bounded traceback and answers 500 ``internal_error``, and the service keeps serving.

The compat front doors get the same errors in their clients' shapes, chosen here by path (``dialect``):
``/v1/images/*`` and ``/v1/models`` answer OpenAI's ``{"error": {"message", "type", "param", "code"}}``
(a 422 becomes 400, as OpenAI reports bad values; every 5xx carries ``x-should-retry: false`` so the
SDK does not run a long GPU job again); ``/sdapi/*`` answers A1111's ``{"error", "detail", "body",
"errors"}``. ``code`` stays ours in both.
"""

from __future__ import annotations

import asyncio
import json
import logging
import types
import typing
from typing import Any

from annotated_types import Ge, Gt, Le, Lt, MaxLen, MinLen, MultipleOf
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from sdworker.api.schemas import JobRequest
from sdworker.errors import NotReady, QueueFull, SdworkerError

log = logging.getLogger(__name__)


def error_body(code: str, message: str, field: str | None = None, **extra: Any) -> dict[str, Any]:
    inner: dict[str, Any] = {"code": code, "message": message}
    if field is not None:
        inner["field"] = field
    inner.update(extra)
    return {"error": inner, "code": code, "message": message}


def error_response(
    code: str, message: str, status: int, field: str | None = None, *, path: str = "", **extra: Any
) -> JSONResponse:
    match dialect(path):
        case "openai":
            status = 400 if status == 422 else status
            body: dict[str, Any] = {
                "error": {"message": message, "type": _openai_type(status), "param": field, "code": code}
            }
            headers = {"x-should-retry": "false"} if status >= 500 else None
            return JSONResponse(body, status_code=status, headers=headers)
        case "a1111":
            return JSONResponse({"error": code, "detail": message, "body": None, "errors": message}, status_code=status)
    return JSONResponse(error_body(code, message, field, **extra), status_code=status)


def dialect(path: str) -> str:
    """Whose error shape a path speaks: ``openai``, ``a1111`` or ours (``native``)."""
    if path.startswith("/v1/images/") or path == "/v1/models":
        return "openai"
    if path.startswith("/sdapi/"):
        return "a1111"
    return "native"


def _openai_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error"
    )


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(SdworkerError, _sdworker_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    # No handler for Exception here: api/guard.py logs each escaped error once and answers 500
    # (a handler here would log it, and uvicorn would log it again when Starlette re-raises it).


async def _sdworker_error(request: Request, exc: SdworkerError) -> JSONResponse:
    response = error_response(exc.code, exc.message, exc.http_status, exc.field, path=request.url.path)
    if isinstance(exc, QueueFull | NotReady):
        response.headers["Retry-After"] = str(exc.retry_after_seconds)
    return response


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    if exc.status_code == 400:
        # The only 400 HTTPException is FastAPI's own when a JSON body cannot be read at all (not
        # UTF-8, say); our routes raise SdworkerError. It is the client's malformed JSON.
        return error_response(
            "invalid_json", "body: malformed JSON (not UTF-8 text, or unreadable)", 400, "body", path=request.url.path
        )
    codes = {404: "not_found", 405: "method_not_allowed"}
    response = error_response(
        codes.get(exc.status_code, "http_error"), str(exc.detail), exc.status_code, path=request.url.path
    )
    for key, value in (exc.headers or {}).items():
        response.headers[key] = value
    if exc.status_code == 405:
        response.headers["Allow"] = ", ".join(_allowed_methods(request))
    return response


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this path: Starlette's own Allow names only the first route
    that matched the path (``GET /v1/jobs``), not the others (``POST /v1/jobs``). HEAD goes with GET
    (the edge guard serves it)."""
    routes = request.app.router.routes
    methods = {
        method
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE")
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    }
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request", "type": "value_error"}
    if first.get("type") == "json_invalid":
        ctx = first.get("ctx")
        detail = ctx.get("error", "cannot parse") if isinstance(ctx, dict) else "cannot parse"
        return error_response("invalid_json", f"body: malformed JSON ({detail})", 400, "body", path=request.url.path)
    loc = [str(part) for part in first.get("loc", ())]
    in_body = bool(loc) and loc[0] == "body"
    path = loc[1:] if in_body else loc[1:] if len(loc) > 1 else loc
    field = ".".join(path) or (loc[0] if loc else "body")
    message = f"{field}: {first.get('msg', 'invalid value')}"
    if first.get("type") == "extra_forbidden":
        message = f"{field}: unknown field"
    elif first.get("type") != "missing" and "input" in first:
        message += f" (got {_short(first['input'])})"
    allowed = _allowed(path) if in_body and dialect(request.url.path) == "native" else None
    if allowed:
        message += f"; allowed: {allowed}"
    extra: dict[str, Any] = {"allowed": allowed} if allowed else {}
    if len(errors) > 1:
        extra["errors"] = [
            {"field": ".".join(str(p) for p in e.get("loc", ())[1:]), "message": e.get("msg")} for e in errors[:10]
        ]
    return error_response("invalid_request", message, 422, field, path=request.url.path, **extra)


def _short(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, str | int | float | bool | type(None)) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _allowed(path: list[str]) -> str | None:
    """The allowed range of a body field, from the schema's own constraints (one source of truth)."""
    model: type[BaseModel] = JobRequest
    info = None
    for index, name in enumerate(path):
        info = model.model_fields.get(name)
        if info is None:
            return ", ".join(model.model_fields) if index == len(path) - 1 else None
        nested = [a for a in _union_args(info.annotation) if isinstance(a, type) and issubclass(a, BaseModel)]
        if nested and index < len(path) - 1:
            model = nested[0]
    if info is None:
        return None
    literals = [
        v for a in _union_args(info.annotation) if typing.get_origin(a) is typing.Literal for v in typing.get_args(a)
    ]
    if literals:
        return " | ".join(str(v) for v in literals)
    parts = []
    for meta in info.metadata:
        if isinstance(meta, Ge):
            parts.append(f">= {meta.ge}")
        elif isinstance(meta, Gt):
            parts.append(f"> {meta.gt}")
        elif isinstance(meta, Le):
            parts.append(f"<= {meta.le}")
        elif isinstance(meta, Lt):
            parts.append(f"< {meta.lt}")
        elif isinstance(meta, MultipleOf):
            parts.append(f"a multiple of {meta.multiple_of}")
        elif isinstance(meta, MinLen):
            parts.append(f"length >= {meta.min_length}")
        elif isinstance(meta, MaxLen):
            parts.append(f"length <= {meta.max_length}")
    kinds = [a.__name__ for a in _union_args(info.annotation) if isinstance(a, type) and a is not type(None)]
    return ", ".join([" or ".join(kinds), *parts]) if kinds or parts else None


def _union_args(annotation: Any) -> tuple[Any, ...]:
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        return typing.get_args(annotation)
    return (annotation,)


def _json_not_utf8(scope: Scope, body: bytes) -> bool:
    """A JSON body in UTF-16 or UTF-32 (which Python's ``json.loads`` would silently accept): its BOM,
    or a NUL among the first four bytes (JSON text starts with an ASCII character; UTF-8 JSON has no
    raw NUL anywhere). A UTF-8 byte order mark is ignored, as RFC 8259 section 8.1 allows."""
    media_type = dict(scope["headers"]).get(b"content-type", b"").partition(b";")[0].strip().lower()
    if media_type != b"application/json":
        return False
    return body.startswith((b"\xff\xfe", b"\xfe\xff")) or b"\x00" in body[:4]


class BodyLimitMiddleware:
    """413 for a body above ``max_body_bytes``: refused on Content-Length before reading, and counted
    while reading (a chunked body has no Content-Length). The body is then replayed to the app.

    A body also has a deadline, answered ``408 request_timeout`` (and the connection closed): it must
    arrive within ``body_timeout_seconds`` plus ``1 / body_min_rate_bytes`` seconds per byte received
    (Apache's ``mod_reqtimeout`` rule). Without it a client that stops mid-body, or sends a byte every
    few seconds against a large Content-Length, holds a connection and its file descriptor forever:
    uvicorn has no body timeout, and a slow upload at any real rate keeps extending its own deadline."""

    def __init__(
        self, app: ASGIApp, max_body_bytes: int, body_timeout_seconds: float = 30.0, body_min_rate_bytes: int = 1024
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.body_timeout_seconds = body_timeout_seconds
        self.body_min_rate_bytes = body_min_rate_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            deadline = started + self.body_timeout_seconds + size / self.body_min_rate_bytes
            try:
                message = await asyncio.wait_for(receive(), timeout=max(0.0, deadline - loop.time()))
            except TimeoutError:
                await self._too_slow(scope, receive, send, size)
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if _json_not_utf8(scope, body):
            await self._not_utf8(scope, receive, send)
            return
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _not_utf8(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            "invalid_json",
            "body: JSON must be UTF-8 (RFC 8259); this body is UTF-16 or UTF-32",
            400,
            "body",
            path=scope.get("path", ""),
        )
        await response(scope, receive, send)

    async def _too_slow(self, scope: Scope, receive: Receive, send: Send, received: int) -> None:
        response = error_response(
            "request_timeout",
            f"body: not received in time ({received} bytes arrived; a body gets {self.body_timeout_seconds:g} s plus "
            f"1 s per {self.body_min_rate_bytes} bytes)",
            408,
            "body",
            path=scope.get("path", ""),
        )
        response.headers["Connection"] = "close"
        await response(scope, receive, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = error_response(
            "body_too_large",
            f"body: the request body is above the limit of {self.max_body_bytes} bytes",
            413,
            "body",
            path=scope.get("path", ""),
        )
        response.headers["Connection"] = "close"
        await response(scope, receive, send)

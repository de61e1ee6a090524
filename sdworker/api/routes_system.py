"""Liveness, readiness, information, metrics and the bundled page."""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import asdict
from importlib import resources
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from sdworker.api import deps
from sdworker.api.routes_models import library_entry, lora_entry
from sdworker.api.views import iso, worker_view
from sdworker.domain.controlnet import PREPROCESSORS
from sdworker.domain.hires import IMAGE_UPSCALERS, LATENT_UPSCALE_MODES
from sdworker.errors import NotReady

router = APIRouter(tags=["system"])
# Liveness and readiness: also all a fleet worker serves on its ``--health-port`` (``create_probe_app``).
probe_router = APIRouter(tags=["system"])


@probe_router.get("/health", summary="Liveness: the process answers")
async def health() -> dict[str, Any]:
    return {"status": "healthy", "timestamp": iso(time.time())}


class HealthFirst:
    """``GET /health`` answered inside the edge guard (Host and Origin checks hold) but before the
    keys, the body limit's reader and the router, with the same body as the route above (which stays for the OpenAPI
    description). Liveness is a probe that must not wait behind a thousand streams being set up:
    this answer is two sends with nothing awaited before them.

    Answering early is not enough when a burst arrives: the event loop runs, in one turn, every
    request whose bytes came in together, and 1,000 stream set-ups (keys, routing, subscribe, first
    frames: about a millisecond each) made one turn of a second, which a ``/health`` arriving then
    waited out. So every other request passes ``SetupPacer`` first: at most ``per_turn`` of them go
    on in one turn of the loop, the rest wait their turn in arrival order. A turn stays short, and a
    probe is answered within a turn or two whatever the burst. Out of a burst nothing waits."""

    def __init__(self, app: ASGIApp, per_turn: int = 16) -> None:
        self.app = app
        self.pacer = SetupPacer(per_turn)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/health" or scope["method"] not in ("GET", "HEAD"):
            if scope["type"] == "http":
                await self.pacer.turn()
            await self.app(scope, receive, send)
            return
        body = json.dumps({"status": "healthy", "timestamp": iso(time.time())}, separators=(",", ":")).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


class SetupPacer:
    """Lets at most ``per_turn`` callers of ``turn`` go on per turn of the event loop; the others wait,
    first come first served. A turn ends when the loop has run the callbacks it had at its start:
    ``_next_turn``, queued with ``call_soon``, runs in the next one and lets the next few go."""

    def __init__(self, per_turn: int) -> None:
        self.per_turn = per_turn
        self._started = 0
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._turn_queued = False

    async def turn(self) -> None:
        if self._started < self.per_turn and not self._waiting:
            self._started += 1
            self._queue_next_turn()
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self._queue_next_turn()
        await waiter  # a caller cancelled meanwhile (its client left) is skipped by _next_turn

    def _queue_next_turn(self) -> None:
        if not self._turn_queued:
            self._turn_queued = True
            asyncio.get_running_loop().call_soon(self._next_turn)

    def _next_turn(self) -> None:
        self._turn_queued = False
        self._started = 0
        while self._waiting and self._started < self.per_turn:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self._started += 1
        if self._waiting or self._started:
            self._queue_next_turn()


class Readiness(BaseModel):
    ready: bool
    reason: str | None = None
    timestamp: str


@probe_router.get(
    "/ready",
    summary="Readiness: 503 while loading, if the worker died, Redis is down, or shutting down",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready; `reason` says why"}},
)
async def ready(request: Request) -> JSONResponse:
    is_ready, reason = await deps.node(request).readiness()
    if is_ready:
        return JSONResponse({"ready": True, "timestamp": iso(time.time())})
    return JSONResponse(
        {"ready": False, "reason": reason, "timestamp": iso(time.time())},
        status_code=503,
        headers={"Retry-After": str(NotReady.retry_after_seconds)},
    )


@router.get("/v1/info", summary="Model, device, dtype, schedulers, limits and preview defaults (of the fleet)")
async def info(request: Request) -> dict[str, Any]:
    s = deps.settings(request)
    fleet = await deps.service(request).fleet()
    engine = fleet.engine
    return {
        "model": asdict(engine) if engine is not None else {"model": s.model, "loaded": False},
        "models": list(fleet.models),
        "library": [library_entry(m) for m in fleet.library],
        "loras": [lora_entry(lora) for lora in fleet.loras],
        # What the page's guidance controls offer (each also has its own list route).
        "controlnets": list(fleet.controlnets),
        "preprocessors": list(PREPROCESSORS),
        "ip_adapters": list(fleet.ip_adapters),
        "hires_upscalers": [*LATENT_UPSCALE_MODES, *IMAGE_UPSCALERS, *fleet.upscalers],
        "backend": fleet.backend,
        "workers": [worker_view(w) for w in fleet.workers],
        "queue_depth": fleet.queue_depth,
        "ready": (await deps.node(request).readiness())[0],
        "limits": {
            "max_queue": s.max_queue,
            "max_steps": s.max_steps,
            "max_pixels": s.max_pixels,
            "max_images": s.max_images,
            "max_body_bytes": s.max_body_bytes,
            "result_ttl_seconds": s.result_ttl_seconds,
        },
        "preview_defaults": {
            "method": s.preview_method,
            "every": s.preview_every,
            "min_interval_ms": s.preview_min_interval_ms,
            "max_size": s.preview_max_size,
            "format": s.preview_format,
            "quality": s.preview_quality,
        },
        "operations": ["image_generation", "image_transform", "image_inpaint"],
    }


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    await deps.service(request).fleet()  # refreshes the fleet gauges in Redis mode
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/", include_in_schema=False)
async def page_index() -> FileResponse:
    return _page_file("index.html")


@router.get("/page/{name}", include_in_schema=False)
async def page_file(name: str) -> FileResponse:
    return _page_file(name)


def _page_file(name: str) -> FileResponse:
    """A file of the bundled page (package data): only a name listed in the folder is served, so no
    request name ever reaches the file system (``../``, a 300-character name: 404, not an OSError)."""
    folder = resources.files("sdworker.api") / "page"
    files = {entry.name: entry for entry in folder.iterdir() if entry.is_file() and not entry.name.startswith(".")}
    if name not in files:
        raise HTTPException(404, f"no page file {name[:60]!r}")
    return FileResponse(str(files[name]))

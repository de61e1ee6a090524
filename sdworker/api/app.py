"""The FastAPI app factory: ``create_app(settings, engine)``.

The engine is passed unloaded; the runner loads it on its GPU thread once the app starts, so
``/ready`` answers 503 until it is loaded (and again if the worker died or we are shutting down).
Everything in the background starts in the lifespan and is stopped there with a deadline
(``Worker.stop``); ``cli/serve.py`` calls ``Worker.drain`` earlier, on SIGTERM, so streams end before
uvicorn waits on open connections.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from sdworker import __version__
from sdworker.api.errors import BodyLimitMiddleware, install_error_handlers
from sdworker.api.routes_jobs import router as jobs_router
from sdworker.api.routes_system import router as system_router
from sdworker.engine.protocol import Engine
from sdworker.jobs.progress import EncodeFn
from sdworker.jobs.worker import Worker
from sdworker.settings import Settings


def create_app(settings: Settings, engine: Engine, *, encode: EncodeFn | None = None) -> FastAPI:
    """``encode`` replaces the preview encoder (tests make it slow to show skipped previews)."""
    worker = Worker(settings, engine, encode=encode)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        worker.start()
        try:
            yield
        finally:
            await worker.stop()

    app = FastAPI(
        title="sdworker",
        version=__version__,
        description="Stable Diffusion worker: jobs over HTTP, live previews over Server-Sent Events.",
        lifespan=lifespan,
    )
    app.state.worker = worker
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(jobs_router)
    app.include_router(system_router)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["Retry-After", "Location"],
    )
    # Outermost, so an oversized body is refused before anything parses it.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    return app

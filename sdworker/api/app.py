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

from sdworker import __version__
from sdworker.api.edge import install_edge
from sdworker.api.errors import install_error_handlers
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
        docs_url=None,  # served offline by api/docs.py (install_edge)
        redoc_url=None,  # ReDoc loads from a CDN; /docs covers it
    )
    app.state.worker = worker
    app.state.settings = settings
    install_error_handlers(app)
    app.include_router(jobs_router)
    app.include_router(system_router)
    # --- The HTTP edge (api/edge.py): Host/Origin/CORS/content-type guard, body limit, offline
    # /docs, documented error answers. Everything about the edge stays in this one call.
    install_edge(app, settings)
    return app

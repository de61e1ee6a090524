"""The FastAPI app factory: ``create_app(settings, engine, service=...)``.

Three shapes, one factory:

- ``serve`` (default): the memory backend is both the job service and the runner's job source, and
  ``engine`` is run by a runner in this process;
- ``serve --redis``: a Redis job service and a Redis job source, plus the runner;
- ``api --redis``: a Redis job service and no engine (HTTP only; never imports torch).

The engine is passed unloaded; the runner loads it on its GPU thread once the app starts, so
``/ready`` answers 503 until it is loaded (and again if the worker died or we are shutting down).
Everything in the background starts in the lifespan and is stopped there with a deadline
(``Node.stop``); ``cli/serve.py`` calls ``Node.drain`` earlier, on SIGTERM, so streams end before
uvicorn waits on open connections.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from sdworker import __version__
from sdworker.api.compat.a1111_routes import router as a1111_router
from sdworker.api.compat.a1111_state import A1111State
from sdworker.api.compat.openai_routes import router as openai_router
from sdworker.api.errors import BodyLimitMiddleware, install_error_handlers
from sdworker.api.routes_fleet import router as fleet_router
from sdworker.api.routes_jobs import router as jobs_router
from sdworker.api.routes_models import router as models_router
from sdworker.api.routes_system import router as system_router
from sdworker.engine.parameters import parameters_text
from sdworker.engine.protocol import Engine, GenerationRequest, GenerationResult
from sdworker.imaging.metadata import PNG_KEY
from sdworker.jobs.memory import MemoryJobService
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.jobs.node import Node
from sdworker.jobs.progress import EncodeFn
from sdworker.jobs.protocol import JobService, JobSource
from sdworker.jobs.runner import JobRunner, PngText
from sdworker.jobs.spec import JobSpec
from sdworker.settings import Settings


def create_app(
    settings: Settings,
    engine: Engine | None = None,
    *,
    service: JobService | None = None,
    source: JobSource | None = None,
    metrics: ServiceMetrics | None = None,
    encode: EncodeFn | None = None,
) -> FastAPI:
    """``encode`` replaces the preview encoder (tests make it slow to show skipped previews)."""
    metrics = metrics or ServiceMetrics()
    if service is None:
        memory = MemoryJobService(settings, metrics)
        service, source = memory, memory
    runner = None
    if engine is not None:
        if source is None:
            raise ValueError("an engine needs a job source to take jobs from")
        models = None if service.backend == "memory" else (settings.model,)
        runner = JobRunner(
            engine, source, metrics, max_pixels=settings.max_pixels, models=models, encode=encode,
            png_text=_png_text(settings),
        )
    node = Node(settings, service, runner)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.stop()

    app = FastAPI(
        title="sdworker",
        version=__version__,
        description="Stable Diffusion worker: jobs over HTTP, live previews over Server-Sent Events.",
        lifespan=lifespan,
    )
    app.state.node = node
    app.state.service = service
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.a1111 = A1111State()  # A1111 clients' "global" state: the chosen checkpoint, progress
    install_error_handlers(app)
    app.include_router(jobs_router)
    app.include_router(fleet_router)
    app.include_router(system_router)
    app.include_router(models_router)
    app.include_router(openai_router)
    app.include_router(a1111_router)
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["*"],
        expose_headers=["Retry-After", "Location", "x-should-retry"],
    )
    # Outermost, so an oversized body is refused before anything parses it.
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    return app


def _png_text(settings: Settings) -> PngText:
    def png_text(spec: JobSpec, request: GenerationRequest, result: GenerationResult, index: int) -> dict[str, str]:
        """A1111's ``parameters`` chunk, so other tools read the settings back from the PNG."""
        return {PNG_KEY: parameters_text(request, result, index, spec.model or settings.model)}

    return png_text

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
from contextlib import AsyncExitStack, asynccontextmanager

from fastapi import FastAPI

from sdworker import __version__
from sdworker.api.auth import AuthMiddleware, KeyRing, install_reload, url_signer
from sdworker.api.compat.a1111_controlnet import router as controlnet_router
from sdworker.api.compat.a1111_routes import router as a1111_router
from sdworker.api.compat.a1111_state import A1111State
from sdworker.api.compat.openai_routes import router as openai_router
from sdworker.api.edge import install_body_limit, install_edge
from sdworker.api.errors import install_error_handlers
from sdworker.api.mcp_mount import McpMount
from sdworker.api.routes_fleet import router as fleet_router
from sdworker.api.routes_jobs import router as jobs_router
from sdworker.api.routes_models import router as models_router
from sdworker.api.routes_system import HealthFirst, probe_router
from sdworker.api.routes_system import router as system_router
from sdworker.api.routes_webhooks import router as webhooks_router
from sdworker.api.signing import JobLinks
from sdworker.api.views import job_detail
from sdworker.domain.parameters import model_label
from sdworker.engine.protocol import Engine
from sdworker.jobs.heartbeat import queen_heartbeat
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.jobs.node import Node
from sdworker.jobs.progress import EncodeFn
from sdworker.jobs.protocol import JobService, JobSource
from sdworker.jobs.runner import JobRunner, png_text_for
from sdworker.jobs.service import LocalJobService
from sdworker.jobs.store import JobStore
from sdworker.settings import Settings
from sdworker.stores.memory import MemoryStore
from sdworker.stores.results import S3Results


def create_app(
    settings: Settings,
    engine: Engine | None = None,
    *,
    service: JobService | None = None,
    source: JobSource | None = None,
    metrics: ServiceMetrics | None = None,
    encode: EncodeFn | None = None,
    store: JobStore | None = None,
) -> FastAPI:
    """``encode`` replaces the preview encoder (tests make it slow to show skipped previews).
    ``store``: where the local job service keeps jobs (default: memory; ``serve``: SQLite)."""
    metrics = metrics or ServiceMetrics()
    # With --results-s3 the PNGs live in a bucket and image URLs are presigned (stores/results.py).
    results = S3Results(settings.results_s3) if settings.results_s3 else None
    if service is None:
        local = LocalJobService(settings, metrics, store=store or MemoryStore(results))
        service, source = local, local
        if engine is not None:
            local.attach_library(engine)
    runner = None
    if engine is not None:
        if source is None:
            raise ValueError("an engine needs a job source to take jobs from")
        in_process = service.backend != "redis"
        models = None if in_process else (settings.model,)
        runner = JobRunner(
            engine, source, metrics, models=models, encode=encode,
            png_text=png_text_for(settings), default_aliases=(settings.model, model_label(settings.model)),
            max_batch=settings.max_batch, batch_wait_ms=settings.batch_wait_ms,
        )
        runner.fail_on_death = in_process  # a fleet retries the job elsewhere
    attach = getattr(source, "attach_library", None)
    if engine is not None and attach is not None and source is not service:
        attach(engine)  # a Redis worker lists its library in the registry (memory: attached above)
    node = Node(settings, service, runner, source)
    if settings.queen_url and runner is not None:
        node.heartbeat = queen_heartbeat(settings, node.worker_status, settings.port)
        runner.listen(node.heartbeat.changed)

    keys = KeyRing(settings)
    service.use_quotas(keys.quota)  # the keys file's per-key priority, max_queued, rate
    signer = url_signer(settings)

    mcp: McpMount | None = None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        install_reload(keys)
        await node.start()
        try:
            async with AsyncExitStack() as stack:
                if mcp is not None:
                    await stack.enter_async_context(mcp.run())
                yield
        finally:
            await node.stop()

    app = FastAPI(
        title="sdworker",
        version=__version__,
        description="Stable Diffusion worker: jobs over HTTP, live previews over Server-Sent Events.",
        lifespan=lifespan,
        docs_url=None,  # served offline by api/docs.py (install_edge)
        redoc_url=None,  # ReDoc loads from a CDN; /docs covers it
    )
    app.state.node = node
    app.state.service = service
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.a1111 = A1111State()  # A1111 clients' "global" state: the chosen checkpoint, progress
    # Authentication (api/auth.py): the caller's owner name for deps.owner, and signed job URLs.
    app.state.keys = keys  # SIGHUP reloads it (install_reload); tests call reload() the same way
    app.state.links = JobLinks(signer if keys.enabled else None, settings.result_ttl_seconds, results, keys.key_of)
    # A webhook's body is the job as GET /v1/jobs/{id} shows its owner, URLs signed for the owner's key.
    service.render_webhooks_with(lambda view: job_detail(view, app.state.links.for_owner(view.spec.owner)))
    install_error_handlers(app)
    app.include_router(jobs_router)
    app.include_router(fleet_router)
    app.include_router(probe_router)
    app.include_router(system_router)
    app.include_router(webhooks_router)
    app.include_router(models_router)
    app.include_router(openai_router)
    app.include_router(a1111_router)
    app.include_router(controlnet_router)
    if settings.mcp:  # /mcp: the MCP tools over Streamable HTTP (api/mcp_mount.py), behind the same keys
        mcp = McpMount(service, settings, app.state.links, lambda: app.openapi())  # as served (document_limits)
        app.router.routes.append(mcp.route)
    # The body is read inside the key check: a request without a key is refused unread (api/edge.py).
    install_body_limit(app, settings)
    app.add_middleware(AuthMiddleware, ring=keys, signer=signer, metrics_public=settings.metrics_public)
    # Inside the edge guard (a bad Host is refused on /health too), outside the keys and the router.
    app.add_middleware(HealthFirst)
    # --- The HTTP edge (api/edge.py): Host/Origin/CORS/content-type guard, offline /docs,
    # documented error answers (the body limit is installed above, inside the keys).
    install_edge(app, settings)
    return app


def create_probe_app(node: Node) -> FastAPI:
    """A fleet worker's ``--health-port``: ``/health`` and ``/ready`` of ``node`` (Kubernetes probes),
    nothing else. Its lifespan starts and stops the node, as ``create_app``'s does."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await node.start()
        try:
            yield
        finally:
            await node.stop()

    app = FastAPI(title="sdworker worker", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.node = node
    app.include_router(probe_router)
    return app

"""``sdworker serve``: the HTTP service and one generation worker in one process, under uvicorn.

Shutdown, and why it is hooked here: on SIGTERM/Ctrl-C uvicorn stops listening and then waits for
open connections to close *before* it runs the app's lifespan shutdown - and an SSE stream never
closes by itself. So the first signal starts ``Node.drain`` first (no new jobs, ``/ready`` 503;
queued jobs end with ``error`` ``shutting_down``; the running job gets ``shutdown_grace_seconds`` to
finish, else it is cancelled within a step; every stream ends), and only then lets uvicorn exit. A
second Ctrl-C forces the exit; a repeated SIGTERM does not. The process exits 0 after the drain.
"""

from __future__ import annotations

import argparse
import logging

from sdworker.api.app import create_app
from sdworker.cli import settings_from_args
from sdworker.cli.uvicorn_server import configure_logging, serve_app

log = logging.getLogger("sdworker.serve")


def run_serve(args: argparse.Namespace) -> int:
    """One process: the HTTP service and a GPU worker; ``--redis URL`` joins a fleet instead of
    keeping jobs in memory."""
    settings = settings_from_args(args)
    level = configure_logging(args)
    # Imported here: torch and diffusers load only when a server really starts.
    from sdworker.engine.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine(settings)
    if settings.redis_url:
        from sdworker.backends.redis.service import RedisJobService
        from sdworker.backends.redis.source import RedisJobSource
        from sdworker.jobs.metrics import ServiceMetrics

        metrics = ServiceMetrics()
        service = RedisJobService(settings, metrics)
        source = RedisJobSource(settings, metrics=metrics)
        app = create_app(settings, engine, service=service, source=source, metrics=metrics)
    else:
        app = create_app(settings, engine)
    log.info("sdworker serving model %r on http://%s:%d", settings.model, settings.host, settings.port)
    serve_app(app, settings, level)
    return 0

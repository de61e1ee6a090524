"""``sdworker serve``: the HTTP service and one generation worker in one process, under uvicorn
(``cli/uvicorn_server.py`` says how shutdown drains first). ``--redis URL`` joins a fleet: jobs live
in Redis and this process is both an API node and a GPU worker of it."""

from __future__ import annotations

import argparse
import logging

from sdworker.api.app import create_app
from sdworker.cli.flags import check_exposure, check_files, settings_from_args
from sdworker.cli.uvicorn_server import configure_logging, serve_app

log = logging.getLogger("sdworker.serve")


def run_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    check_exposure(settings)
    check_files(settings)
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

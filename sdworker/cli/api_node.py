"""``sdworker api --redis URL``: an HTTP node of a fleet. No engine, no GPU: it never imports torch or
diffusers (an import-linter contract checks the modules it uses), so it starts in well under a second
and a load balancer can put any number of them in front of the same Redis."""

from __future__ import annotations

import argparse
import logging

from sdworker.api.app import create_app
from sdworker.cli.flags import check_exposure, check_files, settings_from_args
from sdworker.cli.uvicorn_server import configure_logging, serve_app
from sdworker.errors import InvalidRequest
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.settings import GPU_MAX_PIXELS, set_in_environment
from sdworker.stores.redis.connection import redacted
from sdworker.stores.redis.service import RedisJobService

log = logging.getLogger("sdworker.api")


def run_api(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if "max_pixels" not in vars(args) and not set_in_environment("max_pixels"):
        # An API node has no device of its own: its CPU must not cap what GPU workers run. At the door
        # it takes up to a GPU's default; each job is then checked against the --max-pixels that the
        # workers of its model registered (stores/redis/service.py: _check_worker_limits).
        settings = settings.model_copy(update={"max_pixels": GPU_MAX_PIXELS})
    if not settings.redis_url:
        raise InvalidRequest("sdworker api needs --redis URL (or SDWORKER_REDIS_URL)", field="redis_url")
    check_exposure(settings)
    check_files(settings)
    level = configure_logging(args)
    metrics = ServiceMetrics()
    app = create_app(settings, None, service=RedisJobService(settings, metrics), metrics=metrics)
    log.info("sdworker API node on http://%s:%d (Redis %s)", settings.host, settings.port,
             redacted(settings.redis_url))
    serve_app(app, settings, level)
    return 0

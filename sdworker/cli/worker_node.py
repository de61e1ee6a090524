"""``sdworker worker --redis URL --model M``: a GPU worker of a fleet, with no public HTTP.

It runs the same ``JobRunner`` as ``serve``, taking jobs from Redis. SIGTERM (or Ctrl-C): take no new
job, let the running one finish within ``--shutdown-grace-seconds``, else hand it back to the queue at
once (another worker starts it without waiting for the claim time; not counted as an attempt). A
second Ctrl-C exits at once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
from typing import TYPE_CHECKING

from sdworker.backends.redis.service import redacted
from sdworker.cli.flags import settings_from_args
from sdworker.cli.uvicorn_server import configure_logging
from sdworker.errors import InvalidRequest
from sdworker.settings import Settings

if TYPE_CHECKING:
    from sdworker.jobs.runner import JobRunner  # imported lazily in _work: it pulls in the engine

log = logging.getLogger("sdworker.worker")


def run_worker(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if not settings.redis_url:
        raise InvalidRequest("sdworker worker needs --redis URL (or SDWORKER_REDIS_URL)", field="redis_url")
    configure_logging(args)
    runner = asyncio.run(_work(settings))
    if runner.dead or runner.abandoned:
        # The GPU thread died (exit non-zero for the supervisor) or was stuck at shutdown: exit
        # without the interpreter joining that thread forever.
        logging.shutdown()
        os._exit(70 if runner.dead else 0)
    return 0


async def _work(settings: Settings) -> JobRunner:
    """Runs until a signal or the death of the generation thread; the runner, to say how it ended."""
    from sdworker.backends.redis.source import RedisJobSource
    from sdworker.domain.parameters import model_label
    from sdworker.engine.diffusers_engine import DiffusersEngine
    from sdworker.jobs.metrics import ServiceMetrics
    from sdworker.jobs.runner import JobRunner, png_text_for

    source = RedisJobSource(settings)
    engine = DiffusersEngine(settings)
    source.attach_library(engine)
    runner = JobRunner(
        engine, source, ServiceMetrics(),
        models=(settings.model,), png_text=png_text_for(settings),
        default_aliases=(settings.model, model_label(settings.model)),
        max_batch=settings.max_batch, batch_wait_ms=settings.batch_wait_ms,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    runner.on_death.append(lambda reason: stop.set())  # its job's lease expires: the fleet retries it
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            raise SystemExit(130)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    log.info("sdworker worker %s serving model %r from Redis %s", source.worker_id, settings.model,
             redacted(settings.redis_url or ""))
    runner.start()
    await stop.wait()
    log.info("stopping: no new jobs; up to %.0f s for the running one, then it is handed back",
             settings.shutdown_grace_seconds)
    await runner.stop(settings.shutdown_grace_seconds, hand_back=True)
    with contextlib.suppress(Exception):
        await runner.close()
    await source.close()
    return runner

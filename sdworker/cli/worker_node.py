"""``sdworker worker --redis URL --model M``: a GPU worker of a fleet, with no public HTTP.

It is a ``Node`` (``jobs/node.py``) like ``serve``'s, without the job service: the same ``JobRunner``,
taking jobs from Redis, the same drain and the same rbee heartbeats (``--queen-url``). What it
honours of its own flags:

- ``--health-port P``: ``/health`` and ``/ready`` on ``--host``:P (Kubernetes probes); ``/ready`` is 200
  once the model is loaded and the worker claims jobs, 503 while loading, when Redis is unreachable
  and from the first signal on. The probes run under the same uvicorn server as ``serve``, so the
  first signal drains the node before uvicorn stops.
- ``--preview-*``: each job's preview fields that its client left unset take this worker's values
  (the API node that took the job filled them from its own flags; the worker knows its device).
- ``--max-pixels`` (by default its device's): a job larger than that ends ``failed`` with
  ``too_large`` (413 semantics) and the worker goes on taking jobs.

SIGTERM (or Ctrl-C): take no new job, let the running one finish within ``--shutdown-grace-seconds``,
else hand it back to the queue at once (another worker starts it without waiting for the claim time;
not counted as an attempt). A second Ctrl-C exits at once. A worker whose generation thread died exits
70 after the drain, so its supervisor restarts it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys

from sdworker.cli.flags import settings_from_args
from sdworker.cli.library_noise import quiet_libraries
from sdworker.cli.uvicorn_server import configure_logging
from sdworker.errors import InvalidRequest
from sdworker.jobs.node import Node
from sdworker.settings import Settings
from sdworker.stores.redis.connection import redacted

log = logging.getLogger("sdworker.worker")


def run_worker(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if not settings.redis_url:
        raise InvalidRequest("sdworker worker needs --redis URL (or SDWORKER_REDIS_URL)", field="redis_url")
    from sdworker.cli.model_check import check_model  # imports torch: only when this command runs

    check_model(settings)
    level = configure_logging(args)
    quiet_libraries(level)
    node = worker_node(settings)
    log.info("sdworker worker %s serving model %r from Redis %s%s", node.worker_id, settings.model,
             redacted(settings.redis_url or ""),
             f"; probes on http://{settings.host}:{settings.health_port}" if settings.health_port is not None else "")
    if settings.health_port is not None:
        from sdworker.api.app import create_probe_app
        from sdworker.cli.uvicorn_server import serve_app

        # serve_app drains the node on the first signal and exits hard if the GPU thread is stuck.
        serve_app(create_probe_app(node), settings.model_copy(update={"port": settings.health_port}), level)
        return 0
    asyncio.run(_work(node, settings))
    # Stopped and handed back: exit now, as serve_app does (the interpreter's teardown of torch takes
    # seconds, and would join a stuck GPU thread forever).
    log.info("stopped (exit code %d)", node.exit_code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(node.exit_code)


class WorkerNode(Node):
    worker_id: str


def worker_node(settings: Settings) -> WorkerNode:
    """The engine (unloaded), its runner, the Redis job source and the heartbeat, as one node."""
    from sdworker.domain.parameters import model_label
    from sdworker.engine.diffusers_engine import DiffusersEngine
    from sdworker.jobs.heartbeat import queen_heartbeat
    from sdworker.jobs.metrics import ServiceMetrics
    from sdworker.jobs.runner import JobRunner, png_text_for
    from sdworker.previews.options import preview_defaults
    from sdworker.stores.redis.source import RedisJobSource

    source = RedisJobSource(settings)
    engine = DiffusersEngine(settings)
    source.attach_library(engine)
    runner = JobRunner(
        engine, source, ServiceMetrics(),
        models=(settings.model,), png_text=png_text_for(settings),
        default_aliases=(settings.model, model_label(settings.model)),
        max_batch=settings.max_batch, batch_wait_ms=settings.batch_wait_ms,
        preview_defaults=preview_defaults(settings),
    )
    node = WorkerNode(settings, None, runner, source)
    node.worker_id = source.worker_id
    if settings.queen_url:
        node.heartbeat = queen_heartbeat(settings, node.worker_status, settings.health_port or 0)
        runner.listen(node.heartbeat.changed)
    return node


async def _work(node: Node, settings: Settings) -> None:
    """Without ``--health-port``: run the node until a signal or the death of the generation thread
    (its job's lease expires and the fleet retries it), then drain it as the server would."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    node.request_exit = stop.set
    signals = 0

    def on_signal() -> None:
        nonlocal signals
        signals += 1
        if signals > 1:
            raise SystemExit(130)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    node.freeze_heap_once_loaded()
    await node.start()
    await stop.wait()
    log.info("stopping: no new jobs; up to %.0f s for the running one, then it is handed back",
             settings.shutdown_grace_seconds)
    await node.stop()

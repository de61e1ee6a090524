"""What every API node of a fleet does in the background: end jobs past their deadline, and every
second update the per-model queue gauges and end jobs that waited too long for a model no live
worker serves. Both are Lua scripts that decide through the transition table, so any number of nodes
may run them at once."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.exceptions import RedisError

from sdworker.errors import NotReady
from sdworker.jobs.deadlines import DEADLINE_MESSAGE
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.jobs.protocol import FleetInfo
from sdworker.settings import Settings
from sdworker.stores.redis import scripts
from sdworker.stores.redis.codec import text
from sdworker.stores.redis.connection import EVENTS_MAXLEN, ttl_ms
from sdworker.stores.redis.fleet import libraries_of, live_workers_with_engines
from sdworker.stores.redis.keys import Keys
from sdworker.stores.redis.results import FleetResults

log = logging.getLogger(__name__)

SWEEP_SECONDS = 1.0
DEADLINE_POLL_SECONDS = 0.5


class FleetHousekeeping:
    """The two background loops of an API node, started and stopped with its ``RedisJobService``."""

    def __init__(
        self,
        redis: Any,
        keys: Keys,
        settings: Settings,
        metrics: ServiceMetrics,
        results: FleetResults,
        read_fleet: Callable[[], Awaitable[FleetInfo]],
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._settings = settings
        self._metrics = metrics
        self._results = results
        self._read_fleet = read_fleet
        self._deadline = redis.register_script(scripts.DEADLINE)
        self._no_worker = redis.register_script(scripts.NO_WORKER)
        self._positions = redis.register_script(scripts.POSITIONS)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._watch_deadlines(), name="sdw-deadlines"),
            loop.create_task(self._sweep_loop(), name="sdworker-queue-sweep"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2.0)
        self._tasks = []

    async def _watch_deadlines(self) -> None:
        """Every API node looks twice a second for jobs past their deadline and ends them (``DEADLINE``
        is atomic and takes the job off ``P:deadlines`` first, so two nodes never both act on one)."""
        while True:
            await asyncio.sleep(DEADLINE_POLL_SECONDS)
            try:
                due = await self._redis.zrangebyscore(self._keys.deadlines, "-inf", time.time(), start=0, num=100)
                for raw in due:
                    await self.end_past_deadline(text(raw) or "")
            except (RedisError, OSError):
                log.debug("deadline sweep: Redis unavailable; next round", exc_info=True)
            except Exception:
                log.exception("deadline sweep failed")

    async def end_past_deadline(self, job_id: str) -> None:
        model = text(await self._redis.hget(self._keys.job(job_id), "model")) or ""
        k = self._keys
        state = await self._deadline(
            keys=[
                k.job(job_id),
                k.events(job_id),
                k.preview(job_id),
                k.queue(model),
                k.queued,
                k.queued_model(model),
                k.deadlines,
            ],
            args=[job_id, ttl_ms(self._settings), EVENTS_MAXLEN, k.control, DEADLINE_MESSAGE],
        )
        if text(state) == "cancelled":
            self._metrics.jobs_finished.labels(outcome="cancelled").inc()
            await self._positions(keys=[k.watched(model)], args=[k.prefix, EVENTS_MAXLEN])

    async def _sweep_loop(self) -> None:
        """Every second: the per-model queue gauges, and ``no_worker`` for jobs that waited longer than
        ``queue_timeout_seconds`` for a model no live worker serves. Every API node sweeps (the script
        is idempotent); each look is O(models + jobs ended), whatever the depth."""
        while True:
            try:
                await self._sweep()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, NotReady):
                pass  # Redis is away: /ready says so; the next sweep catches up
            except Exception:
                log.exception("the queue sweep failed; retrying")
            await asyncio.sleep(SWEEP_SECONDS)

    async def _sweep(self) -> None:
        await self._results.sweep()  # the bucket's objects of expired jobs (--results-s3)
        fleet = await self._read_fleet()
        live = {name for worker, _ in live_workers_with_engines(fleet) for name in (worker.model,)}
        for worker in fleet.workers:
            if worker.status not in ("stopping", "failed"):
                live.update(entry.name for entry in libraries_of(fleet).get(worker.id, ((), ()))[0])
        models = sorted(text(m) or "" for m in await self._redis.smembers(self._keys.models))
        now = time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            for model in models:
                pipe.zcard(self._keys.queued_model(model))
                pipe.zrange(self._keys.queued_model(model), 0, 0, withscores=True)
            rows = await pipe.execute()
        for i, model in enumerate(models):
            depth, head = int(rows[2 * i]), rows[2 * i + 1]
            oldest = now - float(head[0][1]) if head else 0.0
            self._metrics.model_queue_depth.labels(model=model).set(depth)
            self._metrics.model_oldest_age.labels(model=model).set(max(0.0, oldest))
            if model in live or oldest < self._settings.queue_timeout_seconds:
                continue
            cutoff = now - self._settings.queue_timeout_seconds
            for job_id in await self._redis.zrangebyscore(
                self._keys.queued_model(model), "-inf", cutoff, start=0, num=100
            ):
                await self.fail_unserved(text(job_id) or "", model, cutoff)

    async def fail_unserved(self, job_id: str, model: str, cutoff: float) -> None:
        k = self._keys
        message = (
            f"no worker for model {model!r} took the job within {self._settings.queue_timeout_seconds:g} s "
            "(--queue-timeout-seconds)"
        )
        ended = await self._no_worker(
            keys=[k.job(job_id), k.events(job_id), k.preview(job_id), k.queue(model), k.queued, k.queued_model(model)],
            args=[job_id, cutoff, ttl_ms(self._settings), EVENTS_MAXLEN, message],
        )
        if int(ended):
            log.warning("job %s: %s", job_id, message)
            self._metrics.jobs_finished.labels(outcome="failed").inc()

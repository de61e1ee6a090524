"""``Worker``: the job system assembled - bus, queue, store, JobService and JobRunner - with the
lifetime of every background task it starts.

``start`` (from the app's lifespan) starts the runner, which loads the engine on its GPU thread, and
a housekeeping task (expire old results, disconnect stalled watchers). ``drain`` is the graceful
shutdown, idempotent and safe to call from a signal-triggered task and again from the lifespan:

1. stop accepting jobs (``/ready`` answers 503, ``POST /v1/jobs`` 503 ``not_ready``);
2. end every queued job with ``error`` ``shutting_down``;
3. let the running job finish within ``shutdown_grace_seconds``, else cancel it (it stops within a
   step and its watchers get ``error`` ``shutting_down``);
4. end every stream (after its buffered events), so uvicorn has no open response to wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from sdworker.engine.parameters import parameters_text
from sdworker.engine.protocol import Engine, GenerationResult
from sdworker.events.bus import EventBus
from sdworker.imaging.metadata import PNG_KEY
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.jobs.progress import EncodeFn
from sdworker.jobs.queue import InMemoryJobQueue
from sdworker.jobs.runner import JobRunner
from sdworker.jobs.service import SHUTTING_DOWN, JobService
from sdworker.jobs.spec import JobSpec
from sdworker.jobs.store import InMemoryJobStore
from sdworker.settings import Settings

log = logging.getLogger(__name__)

HOUSEKEEPING_SECONDS = 1.0


class Worker:
    def __init__(self, settings: Settings, engine: Engine, *, encode: EncodeFn | None = None) -> None:
        self.settings = settings
        self.engine = engine
        self.metrics = ServiceMetrics()
        self.bus = EventBus(stall_seconds=settings.watcher_stall_seconds)
        self.store = InMemoryJobStore(settings.result_ttl_seconds)
        self.queue = InMemoryJobQueue(settings.max_queue, retry_after_seconds=self._retry_after_seconds)
        self.service = JobService(settings, self.queue, self.store, self.bus, self.metrics)
        self.runner = JobRunner(
            engine, self.service, self.queue, self.bus, self.metrics, encode=encode, png_text=self._png_text
        )
        self.metrics.bind(queue_depth=lambda: len(self.queue), watchers=self.bus.total_watchers)
        self._housekeeping: asyncio.Task[None] | None = None
        self._drain: asyncio.Task[None] | None = None

    def _png_text(self, spec: JobSpec, result: GenerationResult, index: int) -> dict[str, str]:
        """A1111's ``parameters`` chunk, so other tools read the settings back from the PNG."""
        return {PNG_KEY: parameters_text(spec.request, result, index, self.settings.model)}

    def _retry_after_seconds(self) -> int:
        return self.service.retry_after_seconds()

    def start(self) -> None:
        self.runner.start()
        self._housekeeping = asyncio.get_running_loop().create_task(self._housekeep(), name="sdworker-housekeeping")

    def readiness(self) -> tuple[bool, str | None]:
        if self.draining:
            return False, "the server is shutting down"
        if not self.runner.ready:
            return False, self.runner.reason or "not ready"
        return True, None

    @property
    def draining(self) -> bool:
        return self._drain is not None

    async def drain(self) -> None:
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_task(self._drain_now(), name="sdworker-drain")
        await asyncio.shield(self._drain)

    async def stop(self) -> None:
        await self.drain()
        await self.runner.close()

    async def _drain_now(self) -> None:
        grace = self.settings.shutdown_grace_seconds
        log.info("draining: no new jobs; waiting up to %.0f s for the running job", grace)
        self.service.stop_accepting()
        self.service.reject_queued(SHUTTING_DOWN, "the server is shutting down; the job was not started")
        await self.runner.stop(self.settings.shutdown_grace_seconds)
        self.bus.close_all()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            try:
                self.service.expire()
                self.bus.sweep()
            except Exception:
                log.exception("housekeeping failed")

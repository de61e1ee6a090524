"""``Node``: what one process runs - a job service (the API side) and, when it holds an engine, a
runner (the GPU side) - with the lifetime of every background task they start.

``start`` (from the app's lifespan) starts the service and the runner, which loads the engine on its
GPU thread. ``drain`` is the graceful shutdown, idempotent and safe to call from a signal-triggered
task and again from the lifespan:

1. stop accepting jobs (``/ready`` answers 503, ``POST /v1/jobs`` 503 ``not_ready``);
2. memory mode: end every queued job with ``error`` ``shutting_down`` (nobody else would run them);
   Redis mode: leave them queued for the fleet;
3. let the running job finish within ``shutdown_grace_seconds``; then memory mode cancels it (it stops
   within a step; watchers get ``error`` ``shutting_down``) and Redis mode hands it back to the queue
   at once, so another worker runs it without waiting for the claim timeout;
4. end every stream (after its buffered events), so uvicorn has no open response to wait for.
"""

from __future__ import annotations

import asyncio
import logging

from sdworker.jobs.protocol import JobService
from sdworker.jobs.runner import JobRunner
from sdworker.settings import Settings

log = logging.getLogger(__name__)


class Node:
    def __init__(self, settings: Settings, service: JobService, runner: JobRunner | None) -> None:
        self.settings = settings
        self.service = service
        self.runner = runner
        self._drain: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.service.start()
        if self.runner is not None:
            self.runner.start()

    async def readiness(self) -> tuple[bool, str | None]:
        if self.draining:
            return False, "the server is shutting down"
        return await self.service.readiness()

    @property
    def draining(self) -> bool:
        return self._drain is not None

    async def drain(self) -> None:
        if self._drain is None:
            self._drain = asyncio.get_running_loop().create_task(self._drain_now(), name="sdworker-drain")
        await asyncio.shield(self._drain)

    async def stop(self) -> None:
        await self.drain()
        if self.runner is not None:
            await self.runner.close()
        await self.service.close()

    async def _drain_now(self) -> None:
        grace = self.settings.shutdown_grace_seconds
        local = self.service.backend == "memory"
        log.info("draining: no new jobs; waiting up to %.0f s for the running job", grace)
        await self.service.drain(reject_queued=local)
        if self.runner is not None:
            await self.runner.stop(grace, hand_back=not local)
        if local:
            await self.service.drain(reject_queued=True)  # a job claimed while the drain began
        self.service.close_streams()

"""``Node``: what one process runs - a job service (the API side) and, when it holds an engine, a
runner (the GPU side) - with the lifetime of every background task they start. A fleet worker
(``sdworker worker``) is a node without a job service: a runner and its Redis job source, the same
start, drain and heartbeats as ``serve``; its ``/ready`` says the model is loaded and it can claim.

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

With ``--queen-url`` the node also owns the heartbeat to rbee's queen (``jobs/heartbeat.py``): started
after the runner (its first beat says ``starting``), told by the runner of every change of state,
and stopped as the drain begins (one ``stopping`` beat, in parallel with the drain, bounded by the
heartbeat's own timeout), so the queen stops scheduling onto a worker that is going away.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Callable

from sdworker.jobs.heartbeat import QueenHeartbeat
from sdworker.jobs.protocol import JobService, JobSource
from sdworker.jobs.runner import JobRunner
from sdworker.settings import Settings

log = logging.getLogger(__name__)

EXIT_WORKER_DIED = 70  # EX_SOFTWARE: a supervisor restarts the process


class Node:
    def __init__(
        self,
        settings: Settings,
        service: JobService | None,
        runner: JobRunner | None,
        source: JobSource | None = None,
        *,
        heartbeat: QueenHeartbeat | None = None,
    ) -> None:
        self.settings = settings
        self.service = service
        self.runner = runner
        self.source = source
        self.heartbeat = heartbeat  # create_app sets it after the node exists (it reads worker_status)
        self._drain: asyncio.Task[None] | None = None
        # A dead generation thread: the process should exit non-zero after a drain, so its supervisor
        # restarts it. ``request_exit`` is how the CLI's server is asked to (set by serve_app).
        self.exit_code = 0
        self.request_exit: Callable[[], None] | None = None
        if runner is not None:
            runner.on_death.append(self._runner_died)

    async def start(self) -> None:
        if self.service is not None:
            await self.service.start()
        if self.runner is not None:
            self.runner.start()
        if self.heartbeat is not None:
            self.heartbeat.start()

    def freeze_heap_once_loaded(self) -> None:
        """Move every object alive once the model is loaded (torch, diffusers, the model: over half a
        million objects) out of the cyclic garbage collector's reach (``gc.freeze``).

        Why: a full collection walks every tracked object, and with these libraries loaded it took
        1.2 s on this project's CPU, during which the event loop answers nothing; a burst of a
        thousand stream connections allocates enough to trigger one, and ``/health`` took 1.7-2.5 s
        (bench/service.py, bench/scale.py). Those objects live as long as the process, so the collector gains nothing
        by walking them again. Called by the command line only: a test process that builds many apps
        should keep collecting them."""
        runner = self.runner
        if runner is None:
            gc.freeze()  # an API node: its imports are all there is
            return
        frozen = False

        def freeze() -> None:
            nonlocal frozen
            if not frozen and runner.state == "ready":
                frozen = True
                gc.collect()
                gc.freeze()

        runner.listen(freeze)

    @property
    def must_exit_hard(self) -> bool:
        """The GPU thread is stuck or dead: the interpreter would wait on it forever at exit."""
        return self.runner is not None and (self.runner.dead or self.runner.abandoned)

    def _runner_died(self, reason: str) -> None:
        log.critical("%s: draining, then exiting for a restart", reason)
        self.exit_code = EXIT_WORKER_DIED
        if self.request_exit is not None:
            self.request_exit()

    def worker_status(self) -> str:
        """rbee's status of this node's worker (what the heartbeat reports)."""
        if self.draining:
            return "stopping"
        return self.runner.status if self.runner is not None else "ready"

    async def readiness(self) -> tuple[bool, str | None]:
        if self.draining:
            return False, "the server is shutting down"
        if self.runner is not None and not self.runner.ready:
            return False, self.runner.reason or "not ready"
        if self.service is None:  # a fleet worker: ready while it can claim jobs from the store
            reachable = getattr(self.source, "reachable", True)
            return (True, None) if reachable else (False, "the job store is unreachable")
        return await self.service.readiness()

    @property
    def draining(self) -> bool:
        return self._drain is not None

    async def drain(self) -> None:
        if self._drain is None:
            if self.service is not None:
                self.service.stop_accepting()
            self._drain = asyncio.get_running_loop().create_task(self._drain_now(), name="sdworker-drain")
        await asyncio.shield(self._drain)

    async def stop(self) -> None:
        await self.drain()
        if self.heartbeat is not None:
            await self.heartbeat.stop()  # done by the drain already; here in case the drain failed
        if self.runner is not None:
            await self.runner.close()
        if self.source is not None and self.source is not self.service:
            await self.source.close()
        if self.service is not None:
            await self.service.close()

    async def _drain_now(self) -> None:
        grace = self.settings.shutdown_grace_seconds
        # Only the memory store loses what it holds at exit: it ends the queued jobs and cancels the
        # running one. SQLite and Redis keep them: the running job is handed back, the queue stays.
        local = self.service is not None and self.service.backend == "memory"
        log.info("draining: no new jobs; waiting up to %.0f s for the running job", grace)
        beats = None
        if self.heartbeat is not None:
            beats = asyncio.get_running_loop().create_task(self.heartbeat.stop(), name="sdworker-heartbeat-stop")
        if self.service is not None:
            await self.service.drain(reject_queued=local)
        if self.runner is not None:
            await self.runner.stop(grace, hand_back=not local)
        if self.service is not None:
            if local:
                await self.service.drain(reject_queued=True)  # a job claimed while the drain began
            await self.service.close_streams()
        if beats is not None:
            await beats  # bounded: one request with the heartbeat's timeout

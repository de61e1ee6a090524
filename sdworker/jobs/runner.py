"""``JobRunner``: one thread for all GPU work, fed by an asyncio dispatch task.

Threads, and why:

- ``sdworker-gpu`` (one thread, a single-worker executor): ``engine.load()`` and then every
  ``engine.generate()``, one job at a time. Models are not thread-safe and a GPU runs one job well.
- ``sdworker-encode`` (one thread): preview and final-image encoding, so PNG/JPEG work never sits on
  the denoising loop (Pillow releases the GIL while it encodes).
- the event loop: the dispatch task takes a job off the queue, tells the JobService it started, and
  awaits the executor's future. Steps and previews come back only through
  ``loop.call_soon_threadsafe(service.record_event, event)``; nothing else crosses threads.

Cancellation is cooperative: ``JobService.cancel`` sets the job's ``CancelToken``; the engine checks
it after every step and raises ``JobCancelled``. Shutdown (``stop``): take no further job, give the
running one ``grace_seconds`` to finish, then cancel it (stops within one step) and wait for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from sdworker.engine.protocol import Engine, GenerationRequest, GenerationResult
from sdworker.errors import JobCancelled, SdworkerError
from sdworker.events.bus import EventBusProtocol
from sdworker.events.types import JobEvent
from sdworker.imaging.encode import encode_image, encode_png
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.jobs.progress import EncodeFn, StepReporter
from sdworker.jobs.queue import JobQueueProtocol
from sdworker.jobs.service import CANCELLED, JobService
from sdworker.jobs.spec import JobSpec
from sdworker.jobs.state import JobRecord

log = logging.getLogger(__name__)


def _default_encode(pixels: Any, fmt: str, quality: int) -> bytes:
    return encode_image(pixels, fmt, quality)


class JobRunner:
    def __init__(
        self,
        engine: Engine,
        service: JobService,
        queue: JobQueueProtocol,
        bus: EventBusProtocol,
        metrics: ServiceMetrics,
        *,
        encode: EncodeFn | None = None,
        png_text: Callable[[JobSpec, GenerationResult, int], dict[str, str]] | None = None,
    ) -> None:
        self._engine = engine
        self._service = service
        self._queue = queue
        self._bus = bus
        self._metrics = metrics
        self._encode = encode or _default_encode
        self._png_text = png_text
        self._gpu = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdworker-gpu")
        self._encoder = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sdworker-encode")
        self._main: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._current: JobRecord | None = None
        self._stopping = False
        self.state = "loading"  # loading | ready | failed | stopped
        self.reason: str | None = "the model is loading"

    @property
    def ready(self) -> bool:
        return self.state == "ready" and not self._stopping

    def start(self) -> None:
        self._main = asyncio.get_running_loop().create_task(self._run(), name="sdworker-dispatch")
        self._main.add_done_callback(self._on_main_done)

    async def stop(self, grace_seconds: float) -> None:
        """Take no new job; let the running one finish within ``grace_seconds``, else cancel it."""
        self._stopping = True
        self.reason = "the server is shutting down"
        main = self._main
        if main is not None and not main.done():
            if self._current is None:
                main.cancel()
            else:
                done, _ = await asyncio.wait({main}, timeout=grace_seconds)
                if not done and self._current is not None:
                    self._current.cancel.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(main), timeout=max(grace_seconds, 1.0) + 60.0)
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=30.0)
        self.state = "stopped"

    async def close(self, timeout_seconds: float = 10.0) -> None:
        """Free the engine on its own thread (it is not thread-safe), then let both threads go. If the
        GPU thread is stuck (a model still loading), give up after ``timeout_seconds``."""
        loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(loop.run_in_executor(self._gpu, self._engine.close), timeout_seconds)
        except Exception:
            log.warning("closing the engine failed or timed out", exc_info=True)
        self._gpu.shutdown(wait=False, cancel_futures=True)
        self._encoder.shutdown(wait=False, cancel_futures=True)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._gpu, self._engine.load)
        except SdworkerError as exc:
            self._die(exc.message)
            return
        except Exception as exc:
            log.exception("loading the model failed")
            self._die(f"loading the model failed: {type(exc).__name__}")
            return
        self._service.engine_loaded(self._engine.info)
        self.state, self.reason = "ready", None
        while not self._stopping:
            spec = await self._queue.get()
            record = self._service.start(spec.job_id)
            if record is None:
                continue
            self._current = record
            try:
                await self._run_job(loop, record)
            finally:
                self._current = None

    async def _run_job(self, loop: asyncio.AbstractEventLoop, record: JobRecord) -> None:
        spec = record.spec

        def publish(event: JobEvent) -> None:
            loop.call_soon_threadsafe(self._service.record_event, event)

        reporter = StepReporter(
            spec.job_id,
            spec.preview,
            publish=publish,
            watcher_count=lambda: self._bus.watcher_count(spec.job_id),
            encoder=self._encoder,
            encode=self._encode,
            metrics=self._metrics,
        )
        try:
            # Not cancellable from the loop: a job ends through its CancelToken, never mid-step.
            result = await asyncio.shield(
                loop.run_in_executor(self._gpu, self._generate, spec.request, reporter, record)
            )
        except JobCancelled:
            self._service.fail(spec.job_id, CANCELLED, "the job was cancelled", cancelled=True)
            return
        except SdworkerError as exc:
            self._service.fail(spec.job_id, exc.code, exc.message)
            return
        except Exception as exc:
            log.exception("job %s failed", spec.job_id)
            self._service.fail(spec.job_id, "generation_failed", f"generation failed: {type(exc).__name__}")
            return
        # Encode the final PNGs on the encoder thread while the GPU thread moves on to the next job.
        task = loop.create_task(self._finish(loop, spec, result))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _generate(self, request: GenerationRequest, reporter: StepReporter, record: JobRecord) -> GenerationResult:
        return self._engine.generate(request, on_step=reporter, cancel=record.cancel)

    async def _finish(self, loop: asyncio.AbstractEventLoop, spec: JobSpec, result: GenerationResult) -> None:
        try:
            pngs = await loop.run_in_executor(self._encoder, self._encode_final, spec, result)
        except Exception as exc:
            log.exception("encoding the result of job %s failed", spec.job_id)
            self._service.fail(spec.job_id, "generation_failed", f"encoding the image failed: {type(exc).__name__}")
            return
        self._service.complete(spec.job_id, pngs, result.seeds, result.width, result.height)

    def _encode_final(self, spec: JobSpec, result: GenerationResult) -> tuple[bytes, ...]:
        return tuple(
            encode_png(image, self._png_text(spec, result, index) if self._png_text else None)
            for index, image in enumerate(result.images)
        )

    def _die(self, reason: str) -> None:
        self.state, self.reason = "failed", reason
        self._service.worker_died(reason)

    def _on_main_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopping:
            return
        exc = task.exception()
        if exc is not None:
            log.error("the job dispatcher died", exc_info=exc)
            self._die(f"the job dispatcher died: {type(exc).__name__}")

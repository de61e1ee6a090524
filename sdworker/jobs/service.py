"""``JobService``: the only writer of job state.

The API calls ``submit``/``cancel``/``get``/``records``; the runner reports what happens to a job
(``start``, ``record_event``, ``complete``, ``fail``) - always on the event loop thread, so no lock
is needed: the GPU and encoder threads reach ``record_event`` through ``loop.call_soon_threadsafe``.
Every state change is also published on the bus, so watchers and ``GET /v1/jobs/{id}`` agree.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable

from sdworker.engine.protocol import EngineInfo
from sdworker.errors import JobNotFinished, JobNotFound, NotReady, UnknownScheduler, Unsupported
from sdworker.events.bus import EventBusProtocol
from sdworker.events.types import JobCompleted, JobEvent, JobFailed, JobQueued, JobStarted, PreviewReady, StepProgressed
from sdworker.jobs.inputs import build_request
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.jobs.queue import JobQueueProtocol
from sdworker.jobs.spec import JobDraft, JobSpec
from sdworker.jobs.state import JobRecord, JobStatus
from sdworker.jobs.store import JobStoreProtocol
from sdworker.settings import Settings

log = logging.getLogger(__name__)

SHUTTING_DOWN = "shutting_down"
CANCELLED = "cancelled"


class JobService:
    def __init__(
        self,
        settings: Settings,
        queue: JobQueueProtocol,
        store: JobStoreProtocol,
        bus: EventBusProtocol,
        metrics: ServiceMetrics,
        *,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        self._settings = settings
        self._queue = queue
        self._store = store
        self._bus = bus
        self._metrics = metrics
        self._clock = clock
        self._new_id = new_id
        self._accepting = True
        self._engine_info: EngineInfo | None = None
        self._unavailable_reason: str | None = None
        self._job_seconds = 0.0  # moving average, for Retry-After

    # --- API side -----------------------------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self._accepting and self._unavailable_reason is None

    @property
    def engine_info(self) -> EngineInfo | None:
        return self._engine_info

    async def submit(self, draft: JobDraft) -> JobRecord:
        """Validate against the loaded model, reserve a queue slot (429 when full), then decode the
        images in a worker thread (releasing the slot if they are bad) and enqueue."""
        self._check_available()
        self._check_against_engine(draft)
        reservation = self._queue.reserve()
        try:
            request = await asyncio.to_thread(build_request, draft, max_pixels=self._settings.max_pixels)
            self._check_available()
        except BaseException:
            self._queue.release(reservation)
            raise
        spec = JobSpec(
            job_id=self._new_id(),
            request=request,
            preview=draft.preview,
            created_at=self._clock(),
            hive_id=draft.hive_id,
            worker_id=draft.worker_id,
            model=draft.model,
        )
        record = JobRecord(spec=spec, total=request.num_inference_steps)
        self._store.add(record)
        self._bus.open(spec.job_id)
        position = self._queue.put(reservation, spec)
        self._metrics.jobs_submitted.inc()
        self._bus.publish(JobQueued(job_id=spec.job_id, position=position))
        return record

    def get(self, job_id: str) -> JobRecord:
        record = self._store.get(job_id)
        if record is None:
            raise JobNotFound(f"no job {job_id!r} (unknown, or its result expired)", field="job_id")
        return record

    def records(self) -> list[JobRecord]:
        """Newest first."""
        return list(reversed(self._store.records()))

    def position(self, job_id: str) -> int | None:
        return self._queue.position(job_id)

    def watchers(self, job_id: str) -> int:
        return self._bus.watcher_count(job_id)

    def image(self, job_id: str, index: int = 0) -> bytes:
        record = self.get(job_id)
        if record.status is not JobStatus.COMPLETED:
            raise JobNotFinished(f"job {job_id} is {record.status.value}; it has no image", field="job_id")
        if not 0 <= index < len(record.images):
            raise JobNotFound(f"index must be in 0..{len(record.images) - 1}, got {index}", field="index")
        return record.images[index]

    def cancel(self, job_id: str) -> JobRecord:
        """A queued job leaves the queue at once; a running one stops within one step (the runner
        reports it). Cancelling a finished job changes nothing and returns its state (idempotent)."""
        record = self.get(job_id)
        if record.status is JobStatus.QUEUED and self._queue.remove(job_id):
            self._finish(record, JobStatus.CANCELLED, CANCELLED, "the job was cancelled")
            self._publish_positions()
        elif record.status is JobStatus.RUNNING:
            record.cancel.cancel()
        return record

    # --- runner side (event loop thread) -------------------------------------------------------

    def engine_loaded(self, info: EngineInfo) -> None:
        self._engine_info = info

    def worker_died(self, reason: str) -> None:
        self._unavailable_reason = reason
        self.reject_queued("worker_failed", f"the worker cannot run jobs: {reason}")

    def start(self, job_id: str) -> JobRecord | None:
        """The runner took this job off the queue; None if it is gone (cancelled, expired)."""
        record = self._store.get(job_id)
        if record is None or record.status is not JobStatus.QUEUED:
            return None
        record.status = JobStatus.RUNNING
        record.started_at = self._clock()
        self._bus.publish(JobStarted(job_id=job_id))
        self._publish_positions()
        return record

    def record_event(self, event: JobEvent) -> None:
        """A step or preview from the GPU/encoder thread (delivered via call_soon_threadsafe)."""
        record = self._store.get(event.job_id)
        if record is None or record.status is not JobStatus.RUNNING:
            return
        if isinstance(event, StepProgressed | PreviewReady):
            record.step = max(record.step, event.step)
            record.total = event.total
        self._bus.publish(event)

    def complete(self, job_id: str, images: tuple[bytes, ...], seeds: tuple[int, ...], width: int, height: int) -> None:
        record = self._store.get(job_id)
        if record is None or record.status.finished:
            return
        record.images, record.seeds, record.width, record.height = images, seeds, width, height
        record.step = record.total
        self._finish(record, JobStatus.COMPLETED, None, None)
        self._bus.publish(
            JobCompleted(job_id=job_id, images=images, seed=seeds[0], seeds=seeds, width=width, height=height)
        )

    def fail(self, job_id: str, code: str, message: str, *, cancelled: bool = False) -> None:
        record = self._store.get(job_id)
        if record is None or record.status.finished:
            return
        status = JobStatus.CANCELLED if cancelled else JobStatus.FAILED
        if cancelled and not self._accepting:
            code, message = SHUTTING_DOWN, "the server is shutting down; the job was cancelled"
        self._finish(record, status, code, message)

    # --- lifecycle ---------------------------------------------------------------------------

    def stop_accepting(self) -> None:
        self._accepting = False

    def reject_queued(self, code: str, message: str) -> None:
        for job_id in self._queue.job_ids():
            record = self._store.get(job_id)
            self._queue.remove(job_id)
            if record is not None:
                self._finish(record, JobStatus.CANCELLED, code, message)

    def expire(self) -> None:
        for job_id in self._store.expire():
            self._bus.forget(job_id)

    def retry_after_seconds(self) -> int:
        return max(1, min(300, math.ceil(self._job_seconds or 5.0)))

    # --- internals -----------------------------------------------------------------------------

    def _check_available(self) -> None:
        if not self._accepting:
            raise NotReady("the server is shutting down and accepts no new jobs")
        if self._unavailable_reason is not None:
            raise NotReady(f"the worker cannot run jobs: {self._unavailable_reason}")

    def _check_against_engine(self, draft: JobDraft) -> None:
        info = self._engine_info
        if info is None:
            return  # still loading: the engine checks again when the job runs
        if draft.scheduler is not None and draft.scheduler not in info.schedulers:
            raise UnknownScheduler(
                f"scheduler {draft.scheduler!r} is not one of: {', '.join(info.schedulers)}", field="scheduler"
            )
        method = draft.preview.method
        if method in ("taesd", "vae", "latent2rgb") and method not in info.preview_methods:
            hint = " (start the server with --taesd PATH)" if method == "taesd" else ""
            raise Unsupported(
                f"preview.method {method!r} is not available on this server{hint}; "
                f"available: auto, none, {', '.join(info.preview_methods)}",
                field="preview.method",
            )

    def _finish(self, record: JobRecord, status: JobStatus, code: str | None, message: str | None) -> None:
        record.status = status
        record.finished_at = self._clock()
        record.error_code, record.error_message = code, message
        self._metrics.jobs_finished.labels(outcome=status.value).inc()
        if record.started_at is not None:
            seconds = record.finished_at - record.started_at
            self._job_seconds = seconds if not self._job_seconds else 0.8 * self._job_seconds + 0.2 * seconds
        if code is not None and message is not None:
            self._bus.publish(JobFailed(job_id=record.job_id, code=code, message=message))

    def _publish_positions(self) -> None:
        for position, job_id in enumerate(self._queue.job_ids(), start=1):
            self._bus.publish(JobQueued(job_id=job_id, position=position))

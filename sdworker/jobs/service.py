"""The job's life, written once: ``JobService`` and ``JobSource`` in one object for one process
(``sdworker serve`` without ``--redis``), over a ``JobStore`` that only persists (memory or SQLite).

Which transition is allowed and what it does is the table of ``jobs/transitions.py`` (the Redis
scripts look up the same one); this service applies it, and where each rule lives here:

- submit: the idempotency key is taken before the first await (two concurrent submits with one key
  make one job), a queue slot is reserved before the images are decoded, the job is on the store
  (durably) before its 202;
- claim -> start: only a job still ``queued`` starts (a cancel that landed between the queue's pop
  and the start wins);
- publish/heartbeat: events of a running job are numbered by the bus and written through;
- finish (``_complete``/``_fail``/``_end``): a cancel asked before the result is stored wins; an
  interrupt completes with the image so far; the input images are dropped (``without_inputs``);
  retention trims every index;
- cancel/interrupt; release (hand-back: a ``cancelling`` job is cancelled, never left without an
  owner); expire; retry after a restart (``reason: "restarted"``, counted against ``max_attempts``;
  out of attempts = failed, which is this service's dead letter).

Everything runs on the event loop, so no lock is needed: the runner reaches it through its
``LocalLease`` (whose methods the runner calls on the loop; the GPU thread hops over with
``loop.call_soon_threadsafe``). Every state change is also published on the bus, so watchers and
``GET /v1/jobs/{id}`` agree.

Where it rightly differs from Redis: a runner that dies fails its job (``worker_died``; there is no
other worker to retry on), and there is no dead-letter list.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
import uuid
from collections.abc import Callable, Collection
from typing import Any

from sdworker.domain.batch_plan import batch_key
from sdworker.domain.catalog import EngineInfo, LoraInfo, ModelInfo
from sdworker.domain.control import CancelToken
from sdworker.domain.parameters import model_label
from sdworker.errors import JobNotFinished, JobNotFound, NotReady
from sdworker.events.bus import EventBus, Subscription
from sdworker.events.types import (
    JobCompleted,
    JobEvent,
    JobFailed,
    JobQueued,
    JobRetrying,
    JobStarted,
    PreviewReady,
    StepProgressed,
    end_marker,
    stream_closing,
    without_image,
)
from sdworker.jobs.deadlines import DEADLINE_EXCEEDED, DEADLINE_MESSAGE
from sdworker.jobs.inputs import DEFAULT_PARAMETERS, DEFAULT_SIZE, check_inputs
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.jobs.outbox import WebhookMessage, WebhookOutbox
from sdworker.jobs.protocol import FleetInfo, Lease
from sdworker.jobs.queue import InMemoryJobQueue
from sdworker.jobs.quotas import QuotaLookup, RateWindow, check_priority, check_queued, no_quota
from sdworker.jobs.spec import JobDraft, JobSpec
from sdworker.jobs.state import JobStatus, JobView
from sdworker.jobs.store import JobIndex, JobRecord, JobStore
from sdworker.jobs.submission import (
    ModelLibrary,
    build_spec,
    check_against_engine,
    check_against_library,
    resolve_model,
)
from sdworker.jobs.transitions import Action, Effect, Transition, rule, without_inputs
from sdworker.settings import Settings
from sdworker.webhooks.targets import check_target

log = logging.getLogger(__name__)

SHUTTING_DOWN = "shutting_down"
CANCELLED = "cancelled"
RESTARTED = "restarted"
HOUSEKEEPING_SECONDS = 1.0
PROGRESS_WEBHOOK_SECONDS = 1.0  # at most one progress webhook a second per job


class LocalLease:
    """The runner's hold on one job. ``publish`` and the finishers run on the event loop."""

    def __init__(self, service: LocalJobService, record: JobRecord) -> None:
        self._service = service
        self._record = record
        self.spec = record.spec
        self.attempt = record.attempt
        self.control: CancelToken = record.control
        self._released = False

    def publish(self, event: JobEvent) -> None:
        if not self._released:
            self._service._record_event(event)

    def watchers(self) -> int:
        return self._service.bus.watcher_count(self.spec.job_id)

    @property
    def lost(self) -> bool:
        return self._released

    async def complete(self, images: tuple[bytes, ...], seeds: tuple[int, ...], width: int, height: int) -> bool:
        if self._released:
            return False
        # The images are written off the loop (an fsync, or an upload with --results-s3): watchers'
        # streams go on meanwhile. A cancel that lands during the write still wins (``_complete``
        # looks at the status after it), and the written images are then discarded.
        store = self._service.store
        refs = await asyncio.to_thread(store.write_images, self.spec.job_id, images)
        if not self._released and self._service._complete(self._record, images, refs, seeds, width, height):
            return True
        store.discard_images(refs)
        return False

    async def fail(self, code: str, message: str, *, cancelled: bool = False) -> bool:
        return not self._released and self._service._fail(self._record, code, message, cancelled=cancelled)

    async def release(self) -> None:
        if not self._released:
            self._released = True
            self._service._hand_back(self._record)


class LocalJobService:
    def __init__(
        self,
        settings: Settings,
        metrics: ServiceMetrics,
        *,
        store: JobStore,
        clock: Callable[[], float] = time.time,
        new_id: Callable[[], str] = lambda: uuid.uuid4().hex,
    ) -> None:
        """``store``: where jobs are kept (``sdworker.stores``). A durable store's jobs are loaded here
        and resumed (``_resume``) before the runner's first claim."""
        self.store = store
        self.backend = store.name
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._new_id = new_id
        self.bus = EventBus(stall_seconds=settings.watcher_stall_seconds)
        self._store = JobIndex(
            settings.result_ttl_seconds,
            clock=clock,
            max_results=settings.max_results,
            max_result_bytes=settings.max_result_bytes,
        )
        self._queue = InMemoryJobQueue(settings.max_queue, retry_after_seconds=self.retry_after_seconds)
        self._idempotency: dict[tuple[str | None, str], str] = {}
        # Keys whose first submit is still between its check and its store write: a second submit with
        # the key waits for the first one's answer instead of making a second job.
        self._pending_keys: dict[tuple[str | None, str], asyncio.Future[JobView]] = {}
        self._finished: dict[str, asyncio.Event] = {}
        self._accepting = True
        self._claims_stopped = asyncio.Event()
        self._engine_info: EngineInfo | None = None
        self._engine_state = "none"  # none (no runner) | loading | ready | failed | stopping
        self._engine_reason: str | None = None
        self._job_seconds = 0.0  # moving average, for Retry-After
        self._housekeeping: asyncio.Task[None] | None = None
        self._library: ModelLibrary | None = None
        self.webhooks = WebhookOutbox(store, settings, clock=clock)
        self._progress_webhook_at: dict[str, float] = {}
        self._quota: QuotaLookup = no_quota
        self._rates = RateWindow()
        self._deadline_timers: dict[str, asyncio.TimerHandle] = {}
        metrics.bind(queue_depth=lambda: len(self._queue), watchers=self.bus.total_watchers)
        self._resume()

    # --- API side -----------------------------------------------------------------------------

    async def submit(
        self, draft: JobDraft, *, owner: str | None = None, idempotency_key: str | None = None
    ) -> JobView:
        if idempotency_key is None:
            return await self._submit(draft, owner, None)
        key = (owner, idempotency_key)
        known = self._idempotency.get(key)
        if known is not None and self._store.get(known) is not None:
            return self._view(self._store.get(known))  # type: ignore[arg-type]
        pending = self._pending_keys.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[JobView] = asyncio.get_running_loop().create_future()
        self._pending_keys[key] = future
        try:
            view = await self._submit(draft, owner, idempotency_key)
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: a refused first submit is no error of the event loop
            raise
        else:
            future.set_result(view)
            return view
        finally:
            del self._pending_keys[key]

    async def _submit(self, draft: JobDraft, owner: str | None, idempotency_key: str | None) -> JobView:
        self._check_available()
        check_against_engine(draft, self._engine_info)
        quota = self._quota(owner)
        check_priority(quota, owner, draft.priority)
        if quota is not None and quota.max_queued is not None:
            check_queued(quota, sum(1 for r in self._store.records()
                                    if r.status is JobStatus.QUEUED and r.spec.owner == owner))
        if draft.webhook is not None:  # a DNS look-up: off the loop
            await asyncio.to_thread(
                check_target, draft.webhook.url, allow_private=self._settings.webhook_allow_private
            )
        model, default_size, defaults, entry = await self._pick_model(draft)
        reservation = self._queue.reserve()
        try:
            self._rates.take(quota, owner)  # last: a refused submit (full queue, bad field) is not counted
            checked = await asyncio.to_thread(
                check_inputs, draft.request, max_pixels=self._settings.max_pixels, default_size=default_size,
                defaults=defaults,
            )
            self._check_available()
        except BaseException:
            self._queue.release(reservation)
            raise
        spec = build_spec(
            draft, checked, job_id=self._new_id(), created_at=self._clock(), owner=owner, model=model, entry=entry
        )
        # settled by check_inputs
        record = JobRecord(spec=spec, total=spec.request.num_inference_steps or 0, idempotency_key=idempotency_key)
        try:
            self.store.save(record, durable=True)  # on disk before the 202
        except BaseException:
            self._queue.release(reservation)
            raise
        self._store.add(record)
        self.bus.open(spec.job_id)
        position = self._queue.put(reservation, spec)
        if idempotency_key is not None:
            self._idempotency[(owner, idempotency_key)] = spec.job_id
        self._metrics.jobs_submitted.inc()
        self._emit(JobQueued(job_id=spec.job_id, position=position))
        if position < len(self._queue):  # it went ahead of others (a priority, an owner's first turn)
            self._publish_positions(behind=position)
        self._watch_deadline(record)
        return self._view(record)

    async def get(self, job_id: str, *, owner: str | None = None) -> JobView:
        return self._view(self._record(job_id, owner))

    async def list_jobs(
        self, *, owner: str | None = None, limit: int = 100, before: str | None = None
    ) -> list[JobView]:
        """Newest first; ``before``: only jobs submitted before that job (the next page)."""
        records = [r for r in reversed(self._store.records()) if owner is None or r.spec.owner == owner]
        if before is not None:
            ids = [r.job_id for r in records]
            records = records[ids.index(before) + 1:] if before in ids else []
        return [self._view(r) for r in records[:limit]]

    async def cancel(self, job_id: str, *, owner: str | None = None) -> JobView:
        record = self._record(job_id, owner)
        self._control(record, Action.CLIENT_CANCEL, CANCELLED, "the job was cancelled")
        return self._view(record)

    async def interrupt(self, job_id: str, *, owner: str | None = None) -> JobView:
        record = self._record(job_id, owner)
        self._control(record, Action.INTERRUPT, CANCELLED, "the job was cancelled")
        return self._view(record)

    async def open_stream(self, job_id: str, after: int = 0, *, owner: str | None = None) -> Subscription | None:
        self._record(job_id, owner)
        if not self.bus.knows(job_id):
            self._reopen_channel(job_id)
        if not self.bus.knows(job_id):
            raise JobNotFound(f"no event stream for job {job_id!r} (its result expired)", field="job_id")
        if self.bus.is_finished(job_id) and after >= self.bus.last_seq(job_id):
            return None
        return self.bus.subscribe(job_id, after)

    async def wait(self, job_id: str, *, owner: str | None = None, timeout: float | None = None) -> JobView:
        record = self._record(job_id, owner)
        if not record.status.finished:
            event = self._finished.setdefault(job_id, asyncio.Event())
            async with asyncio.timeout(timeout):
                await event.wait()
        return self._view(record)

    async def image(self, job_id: str, index: int = 0, *, owner: str | None = None) -> bytes:
        record = self._record(job_id, owner)
        if record.status is not JobStatus.COMPLETED:
            raise JobNotFinished(f"job {job_id} is {record.status.value}; it has no image", field="job_id")
        if not 0 <= index < len(record.image_sizes):
            raise JobNotFound(f"index must be in 0..{len(record.image_sizes) - 1}, got {index}", field="index")
        image = self.store.image(job_id, index)
        if image is None:
            raise JobNotFound(f"the image of job {job_id!r} is gone from the outputs folder", field="job_id")
        return image

    def webhook_secrets(self, owner: str | None) -> tuple[str, ...]:
        return self.webhooks.secrets(owner)

    async def webhook_messages(self, job_id: str, *, owner: str | None = None) -> list[WebhookMessage]:
        self._record(job_id, owner)
        return self.webhooks.messages(job_id)

    def render_webhooks_with(self, render: Callable[[JobView], dict[str, Any]]) -> None:
        self.webhooks.render = render

    def use_quotas(self, lookup: QuotaLookup) -> None:
        self._quota = lookup

    async def fleet(self) -> FleetInfo:
        # ``models`` stays --model's name (what the compat doors list and hash); ``library`` has the rest.
        models: tuple[ModelInfo, ...] = ()
        loras: tuple[LoraInfo, ...] = ()
        controlnets: tuple[str, ...] = ()
        upscalers: tuple[str, ...] = ()
        ip_adapters: tuple[str, ...] = ()
        if self._library is not None and self._engine_state == "ready":
            library = self._library
            models, loras, controlnets, upscalers, ip_adapters = await asyncio.to_thread(
                lambda: (library.list_models(), library.list_loras(), library.list_controlnets(),
                         library.list_upscalers(), library.list_ip_adapters())
            )
        # A model that failed to load is offered by no door (the reason is on /ready): a client that
        # lists models (Open WebUI's Verify) must not find one that every job would wait on forever.
        served = () if self._engine_state == "failed" else (self._settings.model,)
        return FleetInfo(
            models=served, engine=self._engine_info, queue_depth=len(self._queue), library=models, loras=loras,
            backend=self.backend,
            controlnets=controlnets,
            upscalers=upscalers,
            ip_adapters=ip_adapters,
        )

    async def refresh_models(self) -> None:
        """Rescan the engine's folders (on a worker thread: it reads the disk; the library has its own
        lock, so a job running on the GPU thread meanwhile is safe)."""
        if self._library is not None:
            await asyncio.to_thread(self._library.refresh)

    def attach_library(self, library: ModelLibrary) -> None:
        """The engine of this process, for listing and for the model/LoRA checks at submit."""
        self._library = library

    async def dead_letters(self, *, limit: int = 100) -> list[JobView]:
        return []  # a lost job fails at once in memory mode: nothing is ever dead-lettered

    async def requeue(self, job_id: str) -> JobView:
        raise JobNotFound(f"no dead-lettered job {job_id!r} (memory mode keeps none)", field="job_id")

    async def readiness(self) -> tuple[bool, str | None]:
        if not self._accepting:
            return False, "the server is shutting down"
        if self._engine_state == "ready":
            return True, None
        if self._engine_state == "none":
            return False, "no worker runs in this process"
        return False, self._engine_reason or "not ready"

    def retry_after_seconds(self) -> int:
        return max(1, min(300, math.ceil(self._job_seconds or 5.0)))

    async def start(self) -> None:
        self._housekeeping = asyncio.get_running_loop().create_task(self._housekeep(), name="sdworker-housekeeping")
        await self.webhooks.start()

    def stop_accepting(self) -> None:
        self._accepting = False

    async def drain(self, *, reject_queued: bool) -> None:
        self._accepting = False
        if reject_queued:
            self._reject_queued(SHUTTING_DOWN, "the server is shutting down; the job was not started")

    async def close_streams(self) -> None:
        # Memory mode ended every job (``shutting_down``) before this; with SQLite the jobs resume at
        # the next start, and their watchers are told to come back for them.
        self.bus.close_all(stream_closing(
            "the server is stopping; this job is kept and resumes when it restarts: reconnect with "
            "Last-Event-ID"
        ))

    async def close(self) -> None:
        self.bus.close_all()
        for timer in self._deadline_timers.values():
            timer.cancel()
        await self.webhooks.close()
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
        self.store.close()

    # --- GPU side (JobSource) ------------------------------------------------------------------

    async def claim(
        self, models: Collection[str] | None, *, limit: int = 1, wait_seconds: float = 1.0
    ) -> list[Lease]:
        # Wait for a job, a shutdown (stop_claiming) or the timeout, whichever comes first. Cancelling
        # the queue's get is safe: it takes a job only after its last await.
        getter = asyncio.ensure_future(self._queue.get())
        stopper = asyncio.ensure_future(self._claims_stopped.wait())
        try:
            await asyncio.wait({getter, stopper}, timeout=wait_seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not getter.done():
                getter.cancel()
        if getter.cancelled() or not getter.done():
            return []
        spec = getter.result()
        return self._lease([spec, *self._take_partners(spec, limit - 1)])

    async def claim_partners(self, first: JobSpec, *, limit: int, wait_seconds: float) -> list[Lease]:
        specs = self._take_partners(first, limit)
        if not specs and wait_seconds > 0 and not self._claims_stopped.is_set():
            await self._queue.wait_put(wait_seconds)
            specs = self._take_partners(first, limit)
        return self._lease(specs)

    @property
    def batches(self) -> bool:
        return True

    def _take_partners(self, first: JobSpec, limit: int) -> list[JobSpec]:
        """Queued jobs batchable with ``first``, in queue order, removed from the queue."""
        taken: list[JobSpec] = []
        for other in self._queue.specs():
            if len(taken) >= limit:
                break
            if _batchable(first, other) and self._queue.take(other.job_id):
                taken.append(other)
        return taken

    def _lease(self, specs: list[JobSpec]) -> list[Lease]:
        leases: list[Lease] = []
        for each in specs:
            record = self._start(each.job_id)
            if record is not None:
                leases.append(LocalLease(self, record))
        if specs:
            self._publish_positions()
        return leases

    def stop_claiming(self) -> None:
        self._claims_stopped.set()

    async def set_engine(self, info: EngineInfo | None, *, state: str, reason: str | None = None) -> None:
        self._engine_info = info if info is not None else self._engine_info
        self._engine_state, self._engine_reason = state, reason
        if state == "failed":
            self._reject_queued("worker_failed", f"the worker cannot run jobs: {reason}")

    # --- internals -----------------------------------------------------------------------------

    def _record(self, job_id: str, owner: str | None) -> JobRecord:
        record = self._store.get(job_id)
        if record is None or (owner is not None and record.spec.owner != owner):
            raise JobNotFound(f"no job {job_id!r} (unknown, or its result expired)", field="job_id")
        return record

    def _view(self, record: JobRecord) -> JobView:
        position = self._queue.position(record.job_id) if record.status is JobStatus.QUEUED else None
        return record.view(position=position, watchers=self.bus.watcher_count(record.job_id))

    def _check_available(self) -> None:
        if not self._accepting:
            raise NotReady("the server is shutting down and accepts no new jobs")
        if self._engine_state == "failed":
            raise NotReady(f"the worker cannot run jobs: {self._engine_reason}")

    async def _pick_model(self, draft: JobDraft) -> tuple[str, int, tuple[int, float], ModelInfo | None]:
        """The model a job runs on, its native size (the default width/height) and its family's default
        steps and guidance. Until the engine
        is ready its library is not consulted (the engine builds it while loading); the job then
        gets ``--model`` and the engine checks the names when it runs."""
        if self._library is None or self._engine_state != "ready":
            return self._resolve_model(draft.request.model), DEFAULT_SIZE, DEFAULT_PARAMETERS, None
        aliases = frozenset({self._settings.model, model_label(self._settings.model)})
        if self._engine_info is not None:
            aliases |= {self._engine_info.model}
        name, entry = await asyncio.to_thread(check_against_library, draft, self._library, aliases)
        defaults = (entry.default_steps, entry.default_guidance)
        if draft.request.model is None or draft.request.model in aliases:
            # The default keeps --model's name, as before the library: the compat doors look its
            # checkpoint hash up by it, and the runner hands the engine None (its default) for it.
            return self._resolve_model(draft.request.model), entry.native_size, defaults, entry
        return name, entry.native_size, defaults, entry

    def _resolve_model(self, requested: str | None) -> str:
        model = self._settings.model
        served = {model: model, model_label(model): model}
        if self._engine_info is not None:
            served.setdefault(self._engine_info.model, model)
        return resolve_model(requested, served, model)

    def _start(self, job_id: str) -> JobRecord | None:
        record = self._store.get(job_id)
        # Only a job still queued starts: a cancel between the queue's pop and this start wins.
        if record is None or (claimed := rule(record.status, Action.CLAIM)) is None:
            return None
        record.status = claimed.to
        record.attempt += 1
        record.started_at = self._clock()
        self.store.save(record)
        self._metrics.job_queue_seconds.labels(model=self._model_label(record)).observe(
            max(0.0, record.started_at - record.spec.created_at)
        )
        self._emit(JobStarted(job_id=job_id, attempt=record.attempt, worker="local"))
        self._owe_webhook(record, "start")
        return record

    def _record_event(self, event: JobEvent) -> None:
        record = self._store.get(event.job_id)
        if record is None or rule(record.status, Action.PUBLISH) is None:
            return
        if isinstance(event, StepProgressed | PreviewReady):
            record.step = max(record.step, event.step)
            record.total = event.total
        self._emit(event)
        if isinstance(event, StepProgressed):
            last = self._progress_webhook_at.get(record.job_id, 0.0)
            if self._clock() - last >= PROGRESS_WEBHOOK_SECONDS and self._owe_webhook(record, "progress"):
                self._progress_webhook_at[record.job_id] = self._clock()

    def _complete(
        self, record: JobRecord, images: tuple[bytes, ...], refs: tuple[str, ...], seeds: tuple[int, ...],
        width: int, height: int,
    ) -> bool:
        completed = rule(record.status, Action.COMPLETE)
        if completed is None or self._store.get(record.job_id) is not record:
            return False
        if completed.to is not JobStatus.COMPLETED:
            # Cancelled after the runner's last look at its token (same loop turn as the answer
            # "cancelling" the caller got): the cancel wins.
            self._end(record, completed, CANCELLED, "the job was cancelled")
            return False
        record.image_sizes = tuple(len(png) for png in images)
        self.store.save_images(record, refs, record.image_sizes)
        record.seeds, record.width, record.height = seeds, width, height
        record.step = record.total
        self._finish(record, JobStatus.COMPLETED, None, None)
        self._publish_outcome(
            JobCompleted(job_id=record.job_id, images=images, seed=seeds[0], seeds=seeds, width=width, height=height)
        )
        return True

    def _fail(self, record: JobRecord, code: str, message: str, *, cancelled: bool) -> bool:
        ended = rule(record.status, Action.CANCEL if cancelled else Action.FAIL)
        if ended is None:
            return False
        self._end(record, ended, code, message)
        return True

    def _end(self, record: JobRecord, transition: Transition, code: str, message: str) -> None:
        """Into a terminal state the table chose (not ``completed``: that has its images, ``_complete``)."""
        if transition.to is JobStatus.CANCELLED and record.cancel_code == DEADLINE_EXCEEDED:
            code, message = DEADLINE_EXCEEDED, DEADLINE_MESSAGE
        elif transition.to is JobStatus.CANCELLED and not self._accepting:
            code, message = SHUTTING_DOWN, "the server is shutting down; the job was cancelled"
        self._finish(record, transition.to, code, message)

    def _control(self, record: JobRecord, action: Action, code: str, message: str) -> None:
        """A cancel, an interrupt or a deadline asked of the job: the table says whether it ends now
        (queued) or the runner is told to stop (its token; the step callback looks at each step)."""
        transition = rule(record.status, action)
        if transition is None:
            return
        if Effect.FINISH in transition.effects:
            # Also when the runner's claim has taken it off the queue but not started it yet: the
            # start looks at the status and skips a job that is no longer queued.
            self._queue.remove(record.job_id)
            self._finish(record, transition.to, code, message)
            self._publish_positions()
            return
        if Effect.SIGNAL_CANCEL in transition.effects:
            record.control.cancel()
        if Effect.SIGNAL_INTERRUPT in transition.effects:
            record.control.interrupt()
        if transition.to is not record.status:
            record.status = transition.to
            self.store.save(record)

    def _hand_back(self, record: JobRecord) -> None:
        released = rule(record.status, Action.RELEASE)
        if released is None:
            return
        if released.to is not JobStatus.QUEUED:
            # The cancel was asked of the attempt now handed back: honour it, or nobody ever would.
            self._end(record, released, CANCELLED, "the job was cancelled")
            return
        record.status = released.to
        record.attempt -= 1  # a hand-back is not an attempt
        record.control = CancelToken()
        record.step = 0
        self.store.save(record, durable=True)
        self._queue.put_front(record.spec)
        self._publish_positions()

    def _finish(self, record: JobRecord, status: JobStatus, code: str | None, message: str | None) -> None:
        record.status = status
        record.finished_at = self._clock()
        record.spec = without_inputs(record.spec)
        record.error_code, record.error_message = code, message
        self.store.save(record, durable=True)
        self._metrics.jobs_finished.labels(outcome=status.value).inc()
        if record.started_at is not None:
            seconds = record.finished_at - record.started_at
            self._metrics.job_run_seconds.labels(model=self._model_label(record)).observe(max(0.0, seconds))
            self._job_seconds = seconds if not self._job_seconds else 0.8 * self._job_seconds + 0.2 * seconds
        if code is not None and message is not None:
            self._publish_outcome(JobFailed(job_id=record.job_id, code=code, message=message))
        timer = self._deadline_timers.pop(record.job_id, None)
        if timer is not None:
            timer.cancel()
        self._progress_webhook_at.pop(record.job_id, None)
        self._owe_webhook(record, "completed")
        waiter = self._finished.pop(record.job_id, None)
        if waiter is not None:
            waiter.set()
        self._drop(self._store.trim(keep=record.job_id))

    def _model_label(self, record: JobRecord) -> str:
        return record.spec.request.model or self._settings.model

    def _owe_webhook(self, record: JobRecord, event: str) -> bool:
        """Write the webhook ``event`` of the job to the outbox, if its ``webhook`` asked for it."""
        webhook = record.spec.webhook
        if webhook is None or event not in webhook.events:
            return False
        self.webhooks.add(self._view(record), webhook.url, event)
        return True

    def _watch_deadline(self, record: JobRecord) -> None:
        """A timer at the job's deadline (the housekeeping also looks, for jobs loaded at a restart)."""
        deadline = record.spec.deadline_at
        if deadline is None:
            return
        loop = asyncio.get_running_loop()
        delay = max(0.0, deadline - self._clock())
        self._deadline_timers[record.job_id] = loop.call_later(delay, self._deadline_passed, record.job_id)

    def _deadline_passed(self, job_id: str) -> None:
        """A queued job past its deadline ends now; a running one is cancelled like a client's cancel
        (the step callback stops the pipeline at its next step) and ends ``deadline_exceeded``."""
        self._deadline_timers.pop(job_id, None)
        record = self._store.get(job_id)
        if record is None or rule(record.status, Action.DEADLINE) is None:
            return
        record.cancel_code = DEADLINE_EXCEEDED
        self._control(record, Action.DEADLINE, DEADLINE_EXCEEDED, DEADLINE_MESSAGE)

    def _enforce_deadlines(self) -> None:
        now = self._clock()
        for record in self._store.records():
            deadline = record.spec.deadline_at
            if (deadline is not None and deadline <= now and not record.status.finished
                    and record.job_id not in self._deadline_timers):
                self._deadline_passed(record.job_id)

    def _publish_outcome(self, terminal: JobCompleted | JobFailed) -> None:
        """The terminal event and, right after it in the same loop turn, the end marker (rbee's
        ``[DONE]``/``[ERROR] ...``/``[CANCELLED]``): the last event of the stream."""
        if self._emit(terminal) is not None:
            self._emit(end_marker(terminal))

    def _reject_queued(self, code: str, message: str) -> None:
        for job_id in self._queue.job_ids():
            record = self._store.get(job_id)
            self._queue.remove(job_id)
            if record is not None:
                self._finish(record, JobStatus.CANCELLED, code, message)

    def _publish_positions(self, behind: int = 0) -> None:
        """Each queued job's place, for the jobs after the first ``behind`` (their places moved)."""
        for position, job_id in enumerate(self._queue.job_ids()[behind:], start=behind + 1):
            self._emit(JobQueued(job_id=job_id, position=position))

    def _expire(self) -> None:
        self._drop(self._store.expire())

    def _drop(self, ids: list[str]) -> None:
        gone = set(ids)
        for job_id in gone:
            self.bus.forget(job_id)
        if gone:
            self._idempotency = {k: v for k, v in self._idempotency.items() if v not in gone}
            self.store.delete(gone)

    def _emit(self, event: JobEvent) -> JobEvent | None:
        """Number the event on the bus (fan-out, replay) and write it through to the store. A preview
        is stored without its image (replay keeps only the latest preview's image anyway)."""
        stamped = self.bus.publish(event)
        if stamped is not None:
            self.store.append_event(without_image(stamped) if isinstance(stamped, PreviewReady) else stamped)
        return stamped

    def _resume(self) -> None:
        """Load a durable store's jobs (a restart, even after SIGKILL): finished jobs are served again,
        queued ones run in their order, a job that was running is retried first, from step 1 with the
        same seed (``retrying``, reason ``restarted``, counted against ``max_attempts``); one that was
        being cancelled ends cancelled. Event channels of unfinished jobs are rebuilt now (their ids
        continue), those of finished jobs when somebody asks for their stream."""
        retried: list[JobSpec] = []
        queued: list[JobSpec] = []
        for stored in self.store.load():
            record = stored.record
            self._store.add(record)
            if record.idempotency_key is not None:
                self._idempotency[(record.spec.owner, record.idempotency_key)] = record.job_id
            if record.status.finished:
                continue
            self.bus.open(record.job_id)
            for event in stored.events:
                self.bus.accept(event)
            if record.status is JobStatus.QUEUED:
                queued.append(record.spec)
                continue
            # It was running (or being cancelled) when the process stopped: lost with its worker.
            action = Action.DEAD_LETTER if record.attempt >= self._settings.max_attempts else Action.LOST
            lost = rule(record.status, action)
            if lost is None:
                continue
            if lost.to is JobStatus.CANCELLED:
                self._end(record, lost, CANCELLED, "the job was cancelled")
            elif Effect.FINISH in lost.effects:
                self._end(record, lost, "worker_lost",
                          f"the server stopped while the job ran, {record.attempt} times; it is not tried again")
            else:
                record.status, record.step, record.started_at = lost.to, 0, None
                self.store.save(record, durable=True)
                self._emit(JobRetrying(job_id=record.job_id, attempt=record.attempt + 1, reason=RESTARTED))
                retried.append(record.spec)
        for spec in queued:
            self._queue.restore(spec)
        for spec in reversed(retried):  # a job that was running goes first again
            self._queue.put_front(spec)

    def _reopen_channel(self, job_id: str) -> None:
        """A finished job's events from the store, for a stream asked after a restart."""
        events = self.store.events(job_id)
        if events:
            self.bus.open(job_id)
            for event in events:
                self.bus.accept(event)

    async def _housekeep(self) -> None:
        while True:
            await asyncio.sleep(HOUSEKEEPING_SECONDS)
            try:
                self._expire()
                self._enforce_deadlines()
                self.bus.sweep()
            except Exception:
                log.exception("housekeeping failed")


def _batchable(first: JobSpec, other: JobSpec) -> bool:
    """Jobs that can share one UNet call per step (cross-job batching): ``batch_key``, the one rule the
    engine uses too. The engine has the last word (a prompt whose encoding has another length runs
    alone); this only keeps jobs that could never share out of a batch, so they are not claimed early
    and made to wait."""
    key = batch_key(first.request)
    return key is not None and key == batch_key(other.request)

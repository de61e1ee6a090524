"""The two small protocols of the job layer, each with a memory and a Redis implementation.

The API side only ever sees ``JobService``; the GPU side (the runner) only ever sees ``JobSource`` and
the ``Lease`` it hands out. ``sdworker serve`` wires the memory halves together in one process;
``sdworker api`` runs a Redis ``JobService`` alone, ``sdworker worker`` a Redis ``JobSource`` alone.

``owner`` is the caller's identity (an API key's name; None without authentication = may see every
job). A job belongs to the owner that submitted it: another owner gets ``JobNotFound``, exactly as
for a job that does not exist.

Event ids are integers per job in both backends (memory: counted in the bus; Redis: counted in the
job's hash by the script that appends the event), so ``Last-Event-ID`` from one API node works on
any other, and across a retried attempt the ids keep increasing.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, Protocol

from sdworker.domain.catalog import EngineInfo, LoraInfo, ModelInfo
from sdworker.domain.control import CancelToken
from sdworker.events.bus import Subscription
from sdworker.events.types import JobEvent
from sdworker.jobs.outbox import WebhookMessage
from sdworker.jobs.quotas import QuotaLookup
from sdworker.jobs.spec import JobDraft, JobSpec
from sdworker.jobs.state import JobView, WorkerInfo


@dataclass(frozen=True, slots=True)
class FleetInfo:
    """What ``/v1/info`` and ``/v1/models`` describe: one worker in memory mode, the fleet in Redis mode."""

    models: tuple[str, ...]  # models some live worker serves
    engine: EngineInfo | None  # the loaded engine's details (memory mode, or this node's own worker)
    workers: tuple[WorkerInfo, ...] = ()
    queue_depth: int = 0
    backend: str = "memory"
    extra: dict[str, object] = field(default_factory=dict)
    # The model library's details, when known (memory: the engine's; Redis: the union of what live
    # workers registered). Empty = only the names in ``models`` are known.
    library: tuple[ModelInfo, ...] = ()
    loras: tuple[LoraInfo, ...] = ()
    # The guidance models' names (memory mode: the engine's folders; Redis: the union of what live workers
    # registered, so an API node checks a name without the folders).
    controlnets: tuple[str, ...] = ()
    upscalers: tuple[str, ...] = ()
    ip_adapters: tuple[str, ...] = ()

    def known_upscalers(self) -> tuple[str, ...] | None:
        """The upscaler models a job may name at submit; None where this node cannot tell yet (memory mode
        while the engine loads: the engine checks the name when the job runs). A Redis API node knows
        those its live workers registered."""
        if self.backend != "redis" and self.engine is None:
            return None
        return self.upscalers


class JobService(Protocol):
    """Used by ``sdworker.api`` (and the compat front doors). Every method runs on the event loop."""

    backend: str  # "memory" | "redis"

    async def submit(
        self, draft: JobDraft, *, owner: str | None = None, idempotency_key: str | None = None
    ) -> JobView:
        """Validate against what the fleet serves, reserve a queue slot (``QueueFull`` 429), decode and
        check the images, draw the seed, store the job durably, queue it. The same ``idempotency_key``
        from the same owner returns the first job (no second job runs) while that job is kept."""
        ...

    async def get(self, job_id: str, *, owner: str | None = None) -> JobView: ...

    async def list_jobs(
        self, *, owner: str | None = None, limit: int = 100, before: str | None = None
    ) -> list[JobView]:
        """Newest first; ``before``: the page after that job (jobs submitted before it)."""
        ...

    async def cancel(self, job_id: str, *, owner: str | None = None) -> JobView:
        """A queued job leaves the queue at once (``cancelled``); a running one is asked to stop and
        shows ``cancelling`` until its worker stops it (within one step). Idempotent."""
        ...

    async def interrupt(self, job_id: str, *, owner: str | None = None) -> JobView:
        """A1111's interrupt: the running job stops at the next step and completes with what it has
        (an engine that cannot do that cancels instead). A queued job is cancelled."""
        ...

    async def open_stream(self, job_id: str, after: int = 0, *, owner: str | None = None) -> Subscription | None:
        """Replay of the events after ``after``, then live ones. None when the job is finished and
        ``after`` is at or past its last event (the route answers 204, so browsers stop)."""
        ...

    async def wait(self, job_id: str, *, owner: str | None = None, timeout: float | None = None) -> JobView:
        """Until the job is finished (for synchronous front doors)."""
        ...

    async def image(self, job_id: str, index: int = 0, *, owner: str | None = None) -> bytes: ...

    def webhook_secrets(self, owner: str | None) -> tuple[str, ...]:
        """``owner``'s ``whsec_`` webhook secrets, newest first (jobs/outbox.py)."""
        ...

    async def webhook_messages(self, job_id: str, *, owner: str | None = None) -> list[WebhookMessage]:
        """The job's webhooks with their attempts, oldest first."""
        ...

    def render_webhooks_with(self, render: Callable[[JobView], dict[str, Any]]) -> None:
        """How a webhook's body shows the job (the API's own view, ``api/views.py: job_detail``)."""
        ...

    def use_quotas(self, lookup: QuotaLookup) -> None:
        """Where an owner's keys-file quota comes from (``api/auth.py: KeyRing.quota``)."""
        ...

    async def fleet(self) -> FleetInfo: ...

    async def refresh_models(self) -> None:
        """Rescan the models folders (memory: this process's engine; Redis: every live worker, through
        a flag each one picks up at its next registry beat)."""
        ...

    async def dead_letters(self, *, limit: int = 100) -> list[JobView]:
        """Jobs that ran out of attempts (Redis mode; always empty in memory mode)."""
        ...

    async def requeue(self, job_id: str) -> JobView:
        """Run a dead-lettered job again: a new job with the same spec and seed."""
        ...

    async def readiness(self) -> tuple[bool, str | None]: ...

    def retry_after_seconds(self) -> int: ...

    async def start(self) -> None: ...

    def stop_accepting(self) -> None:
        """From now on ``submit`` answers 503 (the first thing a drain does, synchronously)."""
        ...

    async def drain(self, *, reject_queued: bool) -> None:
        """Accept no new job; optionally end the queued ones (memory: nobody else would run them)."""
        ...

    async def close_streams(self) -> None:
        """End every open stream after what it has buffered (shutdown). A stream whose job already
        finished gets its terminal event first."""
        ...

    async def close(self) -> None: ...


class Lease(Protocol):
    """One attempt of one job, held by one runner. Its methods run on the event loop; ``control`` is
    read by the engine on the GPU thread after every step (a ``CancelToken``: cancel or interrupt)."""

    spec: JobSpec
    attempt: int
    control: CancelToken

    def publish(self, event: JobEvent) -> None:
        """Append a step or preview event; never blocks (Redis writes happen in order in a task).
        Dropped once the lease is lost (another attempt owns the job)."""
        ...

    def watchers(self) -> int:
        """How many watch the job now (any thread); 0 means previews need not be decoded."""
        ...

    @property
    def lost(self) -> bool:
        """True once another attempt owns the job, or it was handed back: stop, publish nothing."""
        ...

    async def complete(self, images: tuple[bytes, ...], seeds: tuple[int, ...], width: int, height: int) -> bool:
        """Compare-and-set: True if this attempt's result became the job's result (exactly one wins)."""
        ...

    async def fail(self, code: str, message: str, *, cancelled: bool = False) -> bool: ...

    async def release(self) -> None:
        """Hand the job back to the queue now (SIGTERM); does not count as an attempt."""
        ...


class JobSource(Protocol):
    """Used by the runner on the GPU side."""

    async def claim(
        self, models: Collection[str] | None, *, limit: int = 1, wait_seconds: float = 1.0
    ) -> list[Lease]:
        """The next job for one of ``models`` (None = any), plus up to ``limit - 1`` queued jobs that
        could share its UNet calls (same model, size, steps and scheduler; for cross-job batching).
        Empty after ``wait_seconds`` with nothing to do. Each lease has published ``started`` (or
        ``retrying`` then ``started`` for a job whose earlier attempt was lost)."""
        ...

    async def claim_partners(self, first: JobSpec, *, limit: int, wait_seconds: float) -> list[Lease]:
        """Up to ``limit`` queued jobs that could share ``first``'s UNet calls, waiting at most
        ``wait_seconds`` for one to arrive (the runner calls this in short slices until its
        ``--batch-wait-ms`` are over). A source that cannot batch (``batches`` False) returns []."""
        ...

    @property
    def batches(self) -> bool:
        """Whether ``claim``/``claim_partners`` can hand out several jobs to run as one batch."""
        ...

    async def set_engine(self, info: EngineInfo | None, *, state: str, reason: str | None = None) -> None:
        """The runner's engine state (loading | ready | failed | stopping): readiness, worker registry."""
        ...

    def stop_claiming(self) -> None:
        """A shutdown began: a ``claim`` waiting for work returns empty now (or within its wait)."""
        ...

    async def close(self) -> None: ...

"""Job records, their retention, and ``JobStore``: the small protocol a store implements.

The job's life (which transition is allowed, who wins a race, what is kept) is written once, in
``jobs/service.py``; a store only persists what the service decided (``sdworker/stores``: memory
keeps nothing beyond the process, SQLite keeps everything in ``--data-dir``). The service keeps
every live record in a ``JobIndex`` on the event loop and writes each change through to its store,
so a read never waits on a disk.

Retention: finished jobs are forgotten ``result_ttl_seconds`` after they finish, and sooner, oldest
finished first, when more than ``max_results`` of them or more than ``max_result_bytes`` of their
PNGs are kept (so a burst of jobs cannot grow memory or disk without bound within one TTL). The
newest finished job is always kept, even alone above the byte bound: its watchers and its caller are
about to ask for it. Queued and running jobs are never dropped. Every index (idempotency keys, event
channels, stored events and files) is trimmed with the record.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from sdworker.domain.control import CancelToken
from sdworker.events.types import JobEvent
from sdworker.jobs.outbox import WebhookMessage
from sdworker.jobs.spec import JobSpec
from sdworker.jobs.state import JobStatus, JobView


@dataclass(slots=True)
class JobRecord:
    """One job as the service holds it. Mutable, lives on the event loop; only the service writes it.
    What leaves the job layer is always a frozen ``JobView``."""

    spec: JobSpec
    status: JobStatus = JobStatus.QUEUED
    control: CancelToken = field(default_factory=CancelToken)
    attempt: int = 0
    step: int = 0
    total: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    image_sizes: tuple[int, ...] = ()  # bytes of each final PNG (the PNGs are the store's)
    seeds: tuple[int, ...] = ()
    width: int | None = None
    height: int | None = None
    idempotency_key: str | None = None
    # Why a cancel was asked, when not by a client (``deadline_exceeded``): the code the job ends with.
    cancel_code: str | None = None

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @property
    def result_bytes(self) -> int:
        return sum(self.image_sizes)

    def view(self, *, position: int | None, watchers: int) -> JobView:
        return JobView(
            spec=self.spec,
            status=self.status,
            step=self.step,
            total=self.total,
            attempt=self.attempt,
            queue_position=position,
            started_at=self.started_at,
            finished_at=self.finished_at,
            error_code=self.error_code,
            error_message=self.error_message,
            image_count=len(self.image_sizes),
            seeds=self.seeds,
            width=self.width,
            height=self.height,
            watchers=watchers,
            cancel_requested=self.control.cancelled,
            worker="local" if self.started_at is not None else None,
        )


@dataclass(frozen=True, slots=True)
class StoredJob:
    """What a store hands back at start: a record as last saved, and its recorded events in order."""

    record: JobRecord
    events: tuple[JobEvent, ...]


class JobStore(Protocol):
    """Persistence only: every method is a plain write or read, no rule lives here. Called on the
    event loop; a write is short (SQLite: one small transaction)."""

    name: str  # "memory" | "sqlite"
    durable: bool  # jobs survive a restart of the process

    def load(self) -> list[StoredJob]:
        """Every kept job, in submission order (what a restart resumes from)."""
        ...

    def save(self, record: JobRecord, *, durable: bool = False) -> None:
        """Insert or update the job. ``durable``: on disk before this returns (a submit, a terminal
        state); otherwise it may be lost with the last second before a power cut, never corrupt."""
        ...

    def append_event(self, event: JobEvent) -> None:
        """A stamped event (its ``seq`` set by the bus); previews arrive without their image."""
        ...

    def events(self, job_id: str) -> list[JobEvent]:
        """The job's recorded events in order (``JobCompleted`` with its images)."""
        ...

    def write_images(self, job_id: str, images: tuple[bytes, ...]) -> tuple[str, ...]:
        """Put a finishing job's PNGs where the store keeps them (a file, a bucket, memory) and return
        their references. Blocking (an fsync, an upload): the service runs it in a thread, before the
        job's end is decided, so it touches no record and nothing else the event loop owns."""
        ...

    def save_images(self, record: JobRecord, refs: tuple[str, ...], sizes: tuple[int, ...]) -> None:
        """Point the completed job to its written images (SQLite: in the same row as its state)."""
        ...

    def discard_images(self, refs: Iterable[str]) -> None:
        """Remove written images no job points to (the job was cancelled while they were written)."""
        ...

    def image(self, job_id: str, index: int) -> bytes | None:
        """One final PNG, or None when it is gone."""
        ...

    def delete(self, job_ids: Iterable[str]) -> None:
        """Forget jobs: record, events, images (unless the store keeps outputs), webhook messages."""
        ...

    # The webhook outbox (jobs/outbox.py): messages are written before they are sent.
    def save_webhook(self, message: WebhookMessage) -> None: ...

    def pending_webhooks(self) -> list[WebhookMessage]: ...

    def webhooks(self, job_id: str) -> list[WebhookMessage]: ...

    def close(self) -> None: ...


class JobIndex:
    """The live records, in submission order, and the retention rule over them."""

    def __init__(
        self,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
        *,
        max_results: int = 1_000_000,
        max_result_bytes: int = 1 << 62,
    ) -> None:
        self.ttl_seconds = ttl_seconds
        self.max_results = max_results
        self.max_result_bytes = max_result_bytes
        self._clock = clock
        self._records: dict[str, JobRecord] = {}

    def __len__(self) -> int:
        return len(self._records)

    def add(self, record: JobRecord) -> None:
        self._records[record.job_id] = record

    def get(self, job_id: str) -> JobRecord | None:
        return self._records.get(job_id)

    def records(self) -> list[JobRecord]:
        """Oldest first."""
        return list(self._records.values())

    def expire(self) -> list[str]:
        """Forget finished jobs older than the TTL; returns their ids (so the bus can drop them too)."""
        cutoff = self._clock() - self.ttl_seconds
        gone = [
            job_id
            for job_id, record in self._records.items()
            if record.finished_at is not None and record.finished_at <= cutoff
        ]
        for job_id in gone:
            del self._records[job_id]
        return gone

    def trim(self, keep: str) -> list[str]:
        """Drop the oldest finished jobs above ``max_results`` / ``max_result_bytes``, never ``keep``
        (the job that just finished); their ids."""
        finished = sorted(
            (r for r in self._records.values() if r.finished_at is not None and r.job_id != keep),
            key=lambda r: r.finished_at or 0.0,
        )
        kept = self._records.get(keep)
        count = len(finished) + (kept is not None)
        total = sum(r.result_bytes for r in finished) + (kept.result_bytes if kept is not None else 0)
        gone = []
        while finished and (count > self.max_results or total > self.max_result_bytes):
            oldest = finished.pop(0)
            count -= 1
            total -= oldest.result_bytes
            del self._records[oldest.job_id]
            gone.append(oldest.job_id)
        return gone

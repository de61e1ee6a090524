"""The memory backend's job records. Finished jobs (and their images) are forgotten
``result_ttl_seconds`` after they finish, and sooner, oldest finished first, when more than
``max_results`` of them or more than ``max_result_bytes`` of their PNGs are kept (so a burst of jobs
cannot grow memory without bound within one TTL). The newest finished job is always kept, even alone
above the byte bound: its watchers and its caller are about to ask for it. Queued and running jobs are
never dropped.

``JobRecord`` is mutable and lives on the event loop; only ``MemoryJobService`` writes it. What leaves
the memory backend is always a frozen ``JobView``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from sdworker.domain.control import CancelToken
from sdworker.jobs.spec import JobSpec
from sdworker.jobs.state import JobStatus, JobView


@dataclass(slots=True)
class JobRecord:
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
    images: tuple[bytes, ...] = ()  # final PNGs
    seeds: tuple[int, ...] = ()
    width: int | None = None
    height: int | None = None

    @property
    def job_id(self) -> str:
        return self.spec.job_id

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
            image_count=len(self.images),
            seeds=self.seeds,
            width=self.width,
            height=self.height,
            watchers=watchers,
            cancel_requested=self.control.cancelled,
            worker="local" if self.started_at is not None else None,
        )


class InMemoryJobStore:
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
        total = sum(sum(len(png) for png in r.images) for r in finished)
        total += sum(len(png) for png in kept.images) if kept is not None else 0
        gone = []
        while finished and (count > self.max_results or total > self.max_result_bytes):
            oldest = finished.pop(0)
            count -= 1
            total -= sum(len(png) for png in oldest.images)
            del self._records[oldest.job_id]
            gone.append(oldest.job_id)
        return gone

"""Where job records live. In memory; finished jobs (and their images) are forgotten
``result_ttl_seconds`` after they finish. Queued and running jobs are never expired."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from sdworker.jobs.state import JobRecord


class JobStoreProtocol(Protocol):
    def add(self, record: JobRecord) -> None: ...
    def get(self, job_id: str) -> JobRecord | None: ...
    def records(self) -> list[JobRecord]: ...
    def expire(self) -> list[str]: ...


class InMemoryJobStore:
    def __init__(self, ttl_seconds: float, clock: Callable[[], float] = time.time) -> None:
        self.ttl_seconds = ttl_seconds
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

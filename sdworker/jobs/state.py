"""Job states and the mutable record the JobService keeps per job (it is the only writer)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from sdworker.engine.protocol import CancelToken
from sdworker.jobs.spec import JobSpec


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(slots=True)
class JobRecord:
    spec: JobSpec
    status: JobStatus = JobStatus.QUEUED
    cancel: CancelToken = field(default_factory=CancelToken)
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

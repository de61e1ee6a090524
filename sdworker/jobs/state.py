"""Job states and ``JobView``, the frozen snapshot of a job that the job service hands the API."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from sdworker.jobs.spec import JobSpec


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"  # cancel asked while running; the worker stops within one step
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


@dataclass(frozen=True, slots=True)
class JobView:
    """One job as the API shows it. Made by the backend that holds the job (memory or Redis)."""

    spec: JobSpec
    status: JobStatus
    step: int = 0
    total: int = 0
    attempt: int = 0
    queue_position: int | None = None
    started_at: float | None = None
    finished_at: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    image_count: int = 0
    seeds: tuple[int, ...] = ()
    width: int | None = None
    height: int | None = None
    watchers: int = 0
    cancel_requested: bool = False
    worker: str | None = None

    @property
    def job_id(self) -> str:
        return self.spec.job_id


@dataclass(frozen=True, slots=True)
class WorkerInfo:
    """A GPU worker as the fleet sees it (the fields of rbee's ``WorkerInfo``)."""

    id: str
    model: str
    device: str
    status: str  # starting | ready | busy | stopping
    current_job: str | None
    last_seen: float
    version: str

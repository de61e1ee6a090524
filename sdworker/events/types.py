"""One frozen, slotted record per event kind. Publishers build them with ``seq=0, at=0.0``; the job
backend stamps the job's next sequence number (the SSE ``id``) and the publish time when it accepts
one: the in-memory bus counts per job; the Redis backend counts in the job's hash inside the same Lua
script that appends the event, so ids are the same integers on every API node and across attempts.

Consumers match on the class (``match event: case PreviewReady(): ...``), never on a string; only
``sdworker.api.sse`` turns them into wire names.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class JobEvent:
    job_id: str
    seq: int = 0  # 1, 2, 3... within a job; assigned by the bus
    at: float = 0.0  # wall-clock publish time (epoch seconds); assigned by the bus


@dataclass(frozen=True, slots=True, kw_only=True)
class JobQueued(JobEvent):
    position: int  # 1 = next to run


@dataclass(frozen=True, slots=True, kw_only=True)
class JobStarted(JobEvent):
    attempt: int = 1  # 2, 3... after a worker was lost (Redis mode)
    worker: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class JobRetrying(JobEvent):
    """The attempt that ran the job was lost (its worker died or stalled past the claim time); the job
    goes back to the queue and starts again from step 1 with the same seed."""

    attempt: int  # the attempt about to run
    reason: str  # worker_lost


@dataclass(frozen=True, slots=True, kw_only=True)
class StreamNotice(JobEvent):
    """Something a watcher should know that is not part of the job's history (never replayed, no id):
    e.g. the API node lost Redis and the stream will resume when it returns."""

    code: str
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class StepProgressed(JobEvent):
    step: int  # 1-based
    total: int


@dataclass(frozen=True, slots=True, kw_only=True)
class PreviewReady(JobEvent):
    """Stands in for the progress event of its step."""

    step: int
    total: int
    image: bytes  # encoded in ``format``
    format: str
    width: int
    height: int
    method: str


@dataclass(frozen=True, slots=True, kw_only=True)
class JobCompleted(JobEvent):
    images: tuple[bytes, ...]  # PNG, one per image
    seed: int
    seeds: tuple[int, ...]
    width: int
    height: int


@dataclass(frozen=True, slots=True, kw_only=True)
class JobFailed(JobEvent):
    """Terminal: the job failed, was cancelled (code ``cancelled``) or the server shut down."""

    code: str
    message: str


Event = JobQueued | JobStarted | JobRetrying | StepProgressed | PreviewReady | JobCompleted | JobFailed | StreamNotice
TERMINAL_EVENTS = (JobCompleted, JobFailed)
# Events a lagging watcher may lose to a newer one; everything else is always delivered.
COALESCIBLE_EVENTS = (StepProgressed, PreviewReady)


def is_terminal(event: JobEvent) -> bool:
    return isinstance(event, TERMINAL_EVENTS)


def without_image(event: PreviewReady) -> StepProgressed:
    """What a superseded preview becomes in history and in a lagging watcher's buffer: the same step
    and sequence number, without the image bytes (so replay keeps every id and only one image)."""
    return StepProgressed(job_id=event.job_id, seq=event.seq, at=event.at, step=event.step, total=event.total)

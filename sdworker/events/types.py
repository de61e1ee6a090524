"""One frozen, slotted record per event kind. Publishers build them with ``seq=0, at=0.0``; the job
backend stamps the job's next sequence number (the SSE ``id``) and the publish time when it accepts
one: the in-memory bus counts per job; the Redis backend counts in the job's hash inside the same Lua
script that appends the event, so ids are the same integers on every API node and across attempts.

Consumers match on the class (``match event: case PreviewReady(): ...``), never on a string; only
``sdworker.api.sse`` turns them into wire names.

Every job's history ends with two records: the terminal event (``JobCompleted`` or ``JobFailed``, the
job's outcome) and right after it ``JobEnded`` (``end_marker(terminal)``), rbee's completion marker.
A stream ends after ``JobEnded``, not after the terminal event, so a reader that goes line by line
(rbee's job client) always meets the marker, and ``Last-Event-ID`` of the end event is "nothing left".
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


def stream_closing(message: str) -> StreamNotice:
    """What a stream whose job outlives this process gets last (``EventBus.close_all``): the job is
    kept (queued, or handed back to the queue), so the client reconnects with its Last-Event-ID,
    here after a restart or at another node, and gets exactly the events it missed."""
    return StreamNotice(job_id="", code="stream_closing", message=message)


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelLoading(JobEvent):
    """The job's model is being loaded before its first step (it was not in memory): ``phase``
    ``started`` (seconds 0.0), then ``finished`` (seconds the load took) or ``failed``. Recorded in
    history, so a watcher who joins late still sees why the job took longer to start."""

    model: str
    phase: str  # started | finished | failed
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StepProgressed(JobEvent):
    step: int  # 1-based, counting every pass of the job (the hires fix has two)
    total: int
    pass_number: int = 1  # on the wire: ``pass``


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
    pass_number: int = 1


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


@dataclass(frozen=True, slots=True, kw_only=True)
class JobEnded(JobEvent):
    """The last event of every job, right after its terminal event: rbee's completion marker
    (``[DONE]``, ``[CANCELLED]`` or ``[ERROR] <message>``, always one line). Made only by
    ``end_marker``, so every backend writes the same marker for the same outcome."""

    marker: str


Event = (
    JobQueued | JobStarted | JobRetrying | ModelLoading | StepProgressed | PreviewReady | JobCompleted | JobFailed
    | JobEnded | StreamNotice
)
TERMINAL_EVENTS = (JobCompleted, JobFailed)
# Events a lagging watcher may lose to a newer one; everything else is always delivered.
COALESCIBLE_EVENTS = (StepProgressed, PreviewReady)

# rbee's completion markers (jobs-contract ``completion_markers``)
DONE_MARKER = "[DONE]"
CANCELLED_MARKER = "[CANCELLED]"
ERROR_MARKER = "[ERROR]"
CANCELLED_CODE = "cancelled"  # JobFailed.code of a client's cancel


def is_terminal(event: JobEvent) -> bool:
    """The job's outcome (complete or error). The stream still has ``JobEnded`` to come."""
    return isinstance(event, TERMINAL_EVENTS)


def ends_stream(event: JobEvent) -> bool:
    """The last event of a job's stream: nothing is recorded or delivered after it."""
    return isinstance(event, JobEnded)


def end_marker(terminal: JobCompleted | JobFailed) -> JobEnded:
    """The end record that follows ``terminal`` (same job; ``seq``/``at`` are stamped like any event).

    ``[CANCELLED]`` only for a client's cancel (code ``cancelled``): rbee's client reports it as
    "cancelled". Everything else that did not complete, a shutdown included, is ``[ERROR] <message>``
    with the message folded onto one line (an SSE ``data:`` line ends at the first line break)."""
    if isinstance(terminal, JobCompleted):
        marker = DONE_MARKER
    elif terminal.code == CANCELLED_CODE:
        marker = CANCELLED_MARKER
    else:
        message = " ".join(terminal.message.split()) or terminal.code
        marker = f"{ERROR_MARKER} {message}"
    return JobEnded(job_id=terminal.job_id, marker=marker)


def without_image(event: PreviewReady) -> StepProgressed:
    """What a superseded preview becomes in history and in a lagging watcher's buffer: the same step
    and sequence number, without the image bytes (so replay keeps every id and only one image)."""
    return StepProgressed(job_id=event.job_id, seq=event.seq, at=event.at, step=event.step, total=event.total,
                          pass_number=event.pass_number)

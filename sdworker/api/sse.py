"""Server-Sent Events: the only place that turns events into wire frames, and the streaming response.

Frames keep the reference design's names and fields (``progress``, ``preview``, ``complete``,
``error`` with ``type`` repeating the name) and add ``queued``/``started``, ``loading_model`` (the job's
model is loaded first: ``model``, ``phase`` started/finished/failed, ``seconds``), ``id:`` lines (the bus's
sequence number, for ``Last-Event-ID``), preview ``width``/``height``/``method`` and ``at`` (the
publish time, epoch seconds). A client that does not know a field or an event ignores it.

Every stream ends with ``event: end`` after the terminal ``complete``/``error``: its data is rbee's
completion marker on one line, not JSON (``data: [DONE]``, ``data: [CANCELLED]``, ``data: [ERROR]
<message>``), so rbee's job client, which reads ``data:`` lines and stops at a marker, tells success
from failure. Its own event name keeps EventSource ``onmessage`` handlers (the ``message`` event) and
listeners of the typed events undisturbed. It has an ``id:`` like every recorded event, so
``Last-Event-ID`` of the end event means "nothing left" (204).

The response (``EventStreamResponse``) bounds every write: a watcher whose socket accepts nothing
for ``send_timeout_seconds`` is disconnected, so a stalled client can hold neither a task nor memory.
It also stops as soon as the client disconnects, and the stream ends by itself when the bus ends it
(terminal event, job forgotten, or shutdown), before uvicorn waits on open connections.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from sdworker.events.bus import Subscription
from sdworker.events.types import (
    JobCompleted,
    JobEnded,
    JobEvent,
    JobFailed,
    JobQueued,
    JobRetrying,
    JobStarted,
    ModelLoading,
    PreviewReady,
    StepProgressed,
    StreamNotice,
    ends_stream,
)

log = logging.getLogger(__name__)

RETRY_MS = 2000  # EventSource's reconnect delay


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _percent(step: int, total: int) -> float:
    return round(100.0 * step / total, 2) if total else 0.0


def event_payload(event: JobEvent) -> tuple[str, dict[str, Any]]:
    """The SSE event name and its JSON data."""
    data: dict[str, Any]
    match event:
        case StepProgressed(step=step, total=total):
            name = "progress"
            data = {"step": step, "total": total, "percent": _percent(step, total), "pass": event.pass_number}
        case PreviewReady():
            name = "preview"
            data = {
                "step": event.step,
                "total": event.total,
                "percent": _percent(event.step, event.total),
                "image": _b64(event.image),
                "format": event.format,
                "width": event.width,
                "height": event.height,
                "method": event.method,
                "pass": event.pass_number,
            }
        case JobCompleted():
            name = "complete"
            data = {
                "image": _b64(event.images[0]),
                "format": "png",
                "seed": event.seed,
                "seeds": list(event.seeds),
                "width": event.width,
                "height": event.height,
                "job_id": event.job_id,
            }
            if len(event.images) > 1:
                data["images"] = [_b64(image) for image in event.images]
        case JobFailed(code=code, message=message):
            name = "error"
            data = {"message": message, "code": code}
        case JobQueued(position=position):
            name = "queued"
            data = {"position": position}
        case JobStarted(attempt=attempt, worker=worker):
            name = "started"
            data = {"attempt": attempt}
            if worker is not None:
                data["worker"] = worker
        case JobRetrying(attempt=attempt, reason=reason):
            name = "retrying"
            data = {"attempt": attempt, "reason": reason}
        case ModelLoading(model=model, phase=phase, seconds=seconds):
            name = "loading_model"
            data = {"model": model, "phase": phase, "seconds": round(seconds, 3)}
        case StreamNotice(code=code, message=message):
            name = "notice"
            data = {"code": code, "message": message}
        case JobEnded(marker=marker):
            name = "end"  # on the wire its data is the bare marker (``frame``); this is its JSON view
            data = {"marker": marker}
        case _:
            raise TypeError(f"no wire form for {type(event).__name__}")
    return name, {"type": name, **data, "at": event.at}


@functools.lru_cache(maxsize=64)
def frame(event: JobEvent) -> bytes:
    """The wire bytes of one event. Cached: a fan-out to 1,000 watchers encodes each event (and its
    preview's base64) once, not 1,000 times; events are frozen, so equal events give equal frames."""
    if isinstance(event, JobEnded):
        # The marker as it is, exactly what rbee reads; folded again in case another backend's copy
        # was not made by ``end_marker`` (a line break would split it into two data lines).
        marker = " ".join(event.marker.splitlines())
        return f"id: {event.seq}\nevent: end\ndata: {marker}\n\n".encode()
    name, data = event_payload(event)
    body = f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
    # A transient notice (seq 0) carries no id: it must not move the client's Last-Event-ID.
    return (f"id: {event.seq}\n{body}" if event.seq else body).encode()


KEEPALIVE = b": keep-alive\n\n"
# Events already waiting are written together, up to this many per send: at a job's end the
# ``complete`` and ``end`` frames (and the response's close) cost each watcher one wake-up and one
# write, not three. Bounded so a lagging watcher still gets its frames in pieces.
FRAMES_PER_SEND = 16


async def event_frames(sub: Subscription, keepalive_seconds: float) -> AsyncIterator[bytes]:
    """Frames of one subscription until its end; a comment line whenever nothing happened for
    ``keepalive_seconds`` (proxies and browsers keep the connection open)."""
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        while True:
            try:
                event = await sub.next(timeout=keepalive_seconds)
            except TimeoutError:
                yield KEEPALIVE
                continue
            if event is None:
                return
            more = sub.ready(FRAMES_PER_SEND - 1)
            yield frames((event, *more)) if more or ends_stream(event) else frame(event)
    finally:
        sub.close()


class LastFrames(bytes):
    """A stream's last chunk (it holds the ``end`` frame): the response sends it as the end of the
    body, so a watcher's last write is one send, not two (at a job's end, a thousand times over)."""


@functools.lru_cache(maxsize=16)
def frames(events: tuple[JobEvent, ...]) -> bytes:
    """The frames of events sent together, joined (``LastFrames`` when they end the stream). Cached
    like ``frame``: at a job's end a thousand watchers each take the same (``complete``, ``end``)
    pair, and joining it per watcher would copy the image's base64 a thousand times."""
    joined = b"".join(map(frame, events))
    return LastFrames(joined) if ends_stream(events[-1]) else joined


class EventStreamResponse(Response):
    """A streaming response for SSE with a bounded send and disconnect detection. (A ``Response``
    subclass so FastAPI passes it through; it writes everything itself in ``__call__``.)"""

    def __init__(
        self,
        frames: AsyncIterator[bytes],
        *,
        send_timeout_seconds: float,
        headers: dict[str, str] | None = None,
        on_open: Callable[[], None] | None = None,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.status_code = 200
        self.background = None
        self._frames = frames
        self._send_timeout = send_timeout_seconds
        self._stream_headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",  # nginx: do not buffer the stream
            **(headers or {}),
        }
        self._on_open = on_open
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._on_open:
            self._on_open()
        # The stream runs in this task; a second one waits for the client to leave and cancels it.
        # Plain asyncio rather than an anyio task group and ``fail_after``: at a job's end a
        # thousand streams finish in one burst, and anyio's cancel scopes (each cancel formats the
        # task's repr into its reason) cost more per stream than writing its last frames.
        task = asyncio.current_task()
        assert task is not None
        left = False

        async def listen() -> None:
            nonlocal left
            while (await receive())["type"] != "http.disconnect":
                pass
            left = True
            task.cancel()

        listener: asyncio.Task[None] | None = None
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in self._stream_headers.items()],
                }
            )
            listener = asyncio.get_running_loop().create_task(listen())
            try:
                await self._stream(send)
            except asyncio.CancelledError:
                # Our own cancel (the client left) ends the stream quietly; any other (shutdown) goes on.
                if not left or task.uncancel() > 0:
                    raise
        finally:
            if listener is not None:
                listener.cancel()  # it has not cancelled us (we did not yield since the stream ended)
            with contextlib.suppress(Exception):
                await self._frames.aclose()  # type: ignore[attr-defined]
            if self._on_close:
                self._on_close()

    async def _stream(self, send: Send) -> None:
        try:
            async for chunk in self._frames:
                last = isinstance(chunk, LastFrames)
                # Bounded: uvicorn's send waits only while the socket's buffer is full.
                async with asyncio.timeout(self._send_timeout):
                    await send({"type": "http.response.body", "body": chunk, "more_body": not last})
                if last:
                    return
            async with asyncio.timeout(self._send_timeout):  # the end too: a client may stop reading here
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except TimeoutError:
            # The client stopped reading; leaving without finishing the response closes the socket.
            log.info("disconnected a watcher that read nothing for %.0f s", self._send_timeout)
        except OSError:
            pass  # the client went away mid-write

"""Typed job events, and the decoding of Server-Sent Events into them (no I/O here).

Each wire event becomes one frozen record; the ``error`` event becomes an exception instead
(``JobFailed``, or ``JobCancelled`` for code ``cancelled``), so a loop over a job's events ends
either with ``JobCompleted`` or by raising. An event the client does not know (the server may add
kinds, e.g. ``retrying`` or ``loading_model``) arrives as ``OtherEvent`` with its name and JSON data
rather than breaking the stream; a known event missing a field it needs is an ``OtherEvent`` too.

Event ids are opaque strings (``"7"`` from one server, ``"1764550000000-0"`` from a Redis-backed
fleet): the client only hands the last one back as ``Last-Event-ID``, never compares or counts them.
"""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sdworker.client.errors import JobCancelled, JobFailed

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True, slots=True, kw_only=True)
class JobEvent:
    job_id: str
    id: str | None  # the SSE id, opaque
    at: float | None  # the server's publish time (epoch seconds), when it sent one


@dataclass(frozen=True, slots=True, kw_only=True)
class JobQueued(JobEvent):
    position: int | None  # 1 = next to run


@dataclass(frozen=True, slots=True, kw_only=True)
class JobStarted(JobEvent):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class ModelLoading(JobEvent):
    """The server loads the job's model before its first step (``loading_model``)."""

    model: str
    phase: str  # started | finished | failed
    seconds: float


@dataclass(frozen=True, slots=True, kw_only=True)
class StepProgressed(JobEvent):
    step: int  # 1-based, counting every pass of the job (the hires fix has two)
    total: int
    percent: float
    pass_number: int = 1  # ``pass`` on the wire: 2 in a hires fix's second pass


@dataclass(frozen=True, slots=True, kw_only=True)
class PreviewReady(StepProgressed):
    """A preview stands in for the progress event of its step. ``data`` is the encoded image."""

    data: bytes
    format: str  # jpeg | webp | png
    width: int
    height: int
    method: str

    def image(self) -> Image.Image:
        """The preview decoded (Pillow), on demand: a loop that only counts steps pays nothing."""
        return _open(self.data)


@dataclass(frozen=True, slots=True, kw_only=True)
class JobCompleted(JobEvent):
    pngs: tuple[bytes, ...]  # one PNG per image, with the server's A1111 ``parameters`` text chunk
    seed: int
    seeds: tuple[int, ...]  # image i has seeds[i]
    width: int
    height: int

    def images(self) -> list[Image.Image]:
        return [_open(png) for png in self.pngs]


@dataclass(frozen=True, slots=True, kw_only=True)
class OtherEvent(JobEvent):
    """An event kind this client does not know, passed through unchanged."""

    name: str
    data: Any


Event = JobQueued | JobStarted | ModelLoading | StepProgressed | PreviewReady | JobCompleted | OtherEvent


def _open(data: bytes) -> Image.Image:
    from PIL import Image

    image = Image.open(io.BytesIO(data))
    image.load()
    return image


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    """One dispatched SSE event. ``id`` is this event's own ``id:`` field (None when it had none)."""

    event: str
    data: str
    id: str | None = None
    retry_ms: int | None = None


class SSEDecoder:
    """The SSE line protocol (WHATWG HTML "event stream interpretation"), fed one line at a time.

    Fields accumulate until a blank line dispatches them; comments (keep-alives) are skipped; a block
    without data is not an event. A block cut off by a dropped connection is never dispatched, so a
    half-received event is simply received again after the resume.
    """

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None
        self._retry: int | None = None

    def feed(self, line: str) -> ServerSentEvent | None:
        line = line.rstrip("\r\n")
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> ServerSentEvent | None:
        event = None
        if self._data:
            event = ServerSentEvent(self._event or "message", "\n".join(self._data), self._id, self._retry)
        self._reset()
        return event


def to_event(sse: ServerSentEvent, job_id: str) -> Event:
    """The typed event of one SSE event; raises ``JobFailed``/``JobCancelled`` for ``error``."""
    try:
        data = json.loads(sse.data)
    except json.JSONDecodeError:
        return OtherEvent(job_id=job_id, id=sse.id, at=None, name=sse.event, data=sse.data)
    fields = data if isinstance(data, dict) else {}
    at = fields.get("at")
    base: dict[str, Any] = {"job_id": job_id, "id": sse.id, "at": float(at) if isinstance(at, int | float) else None}
    if sse.event == "error":
        code = str(fields.get("code") or "error")
        error = JobCancelled if code == "cancelled" else JobFailed
        raise error(str(fields.get("message") or code), code=code, job_id=job_id, event_id=sse.id)
    try:
        return _known(sse.event, fields, base)
    except (KeyError, TypeError, ValueError):
        pass  # a known name with a shape we cannot read: pass it through rather than break the stream
    return OtherEvent(**base, name=sse.event, data=data)


def _known(name: str, f: dict[str, Any], base: dict[str, Any]) -> Event:
    if name == "queued":
        position = f.get("position")
        return JobQueued(**base, position=int(position) if position is not None else None)
    if name == "started":
        return JobStarted(**base)
    if name == "loading_model":
        return ModelLoading(**base, model=str(f["model"]), phase=str(f["phase"]), seconds=float(f["seconds"]))
    if name in ("progress", "preview"):
        step, total = int(f["step"]), int(f["total"])
        percent = float(f.get("percent", 100.0 * step / total if total else 0.0))
        pass_number = int(f.get("pass", 1))
        if name == "progress":
            return StepProgressed(**base, step=step, total=total, percent=percent, pass_number=pass_number)
        return PreviewReady(
            **base, step=step, total=total, percent=percent, pass_number=pass_number, data=_b64(f["image"]),
            format=str(f.get("format", "")),
            width=int(f.get("width", 0)), height=int(f.get("height", 0)), method=str(f.get("method", "")),
        )
    if name == "complete":
        pngs = tuple(_b64(image) for image in f["images"]) if f.get("images") else (_b64(f["image"]),)
        seed = int(f["seed"])
        seeds = tuple(int(s) for s in f.get("seeds") or [seed + i for i in range(len(pngs))])
        return JobCompleted(**base, pngs=pngs, seed=seed, seeds=seeds, width=int(f["width"]), height=int(f["height"]))
    raise KeyError(name)


def _b64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise TypeError("expected a base64 string")
    return base64.b64decode(text.split(",", 1)[-1] if text.startswith("data:") else text)

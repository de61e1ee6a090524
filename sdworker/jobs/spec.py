"""What a job is asked to do, as frozen values. Built by the API from the wire schema; nothing here
knows about pydantic or HTTP.

A job's generation fields live in one type, ``GenerationRequest``, from the edge to the engine: the
draft and the spec wrap it with what only the job layer needs (preview options, rbee's bookkeeping,
the job's id and owner). ``JobSpec`` survives a trip through JSON (``to_dict``/``from_dict``, driven
by the types, so a new request field needs no code here): its images are the client's encoded bytes,
its seed, size and model are always set (settled at submit), so any worker that runs the job - the
first, or another after the first died - makes the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sdworker.domain.codec import from_json, to_json
from sdworker.domain.request import GenerationRequest
from sdworker.previews.options import PreviewOptions

WEBHOOK_EVENTS = ("start", "progress", "completed")


@dataclass(frozen=True, slots=True)
class Webhook:
    """Where a job's webhooks go and which of its moments they report: ``start`` (it began to run),
    ``progress`` (a step, at most one a second), ``completed`` (every terminal state)."""

    url: str
    events: tuple[str, ...] = ("completed",)


@dataclass(frozen=True, slots=True)
class JobDraft:
    """A validated submission. Its request's images may still be base64 text and its size, seed and
    model unset: the service reserves a queue slot before decoding anything, so a full queue answers 429
    without spending time on a 30 MB image, then settles the rest (``jobs/submission.py``)."""

    request: GenerationRequest
    preview: PreviewOptions = field(default_factory=PreviewOptions)
    hive_id: str | None = None  # rbee's bookkeeping, shown in the job's parameters
    worker_id: str | None = None
    webhook: Webhook | None = None
    deadline_seconds: float | None = None  # after submit; past it the job ends deadline_exceeded
    priority: int = 0  # higher first; a key may ask up to its keys-file priority
    warnings: tuple[str, ...] = ()  # what a door accepted and will not do (A1111's ignored fields)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A job ready to queue: its settled request (images as encoded bytes) and the job's own data."""

    job_id: str
    request: GenerationRequest
    preview: PreviewOptions
    created_at: float
    owner: str | None = None  # the API key's name that submitted it (None without auth)
    hive_id: str | None = None
    worker_id: str | None = None
    warnings: tuple[str, ...] = ()  # what the model's family ignores of the request, said at submit
    webhook: Webhook | None = None
    deadline_at: float | None = None  # epoch seconds; a job not finished by then is cancelled
    priority: int = 0

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = to_json(self)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> JobSpec:
        return from_json(cls, data)

"""What both front doors do with a submitted job: wait for it while watching the client (a client
that hangs up cancels its job), turn a failed job back into its error, fetch its images."""

from __future__ import annotations

import asyncio

from fastapi import Request

from sdworker.domain.catalog import ModelInfo
from sdworker.errors import ClientGone, GenerationFailed, JobCancelled, QueueFull, SdworkerError
from sdworker.jobs.protocol import FleetInfo, JobService
from sdworker.jobs.state import JobStatus, JobView

DISCONNECT_POLL_SECONDS = 0.25


async def wait_or_cancel(service: JobService, job_id: str, request: Request, owner: str | None) -> JobView:
    """Until the job is finished. Synchronous front doors hold the HTTP call open for a whole GPU job,
    so a client that hangs up (timeout, Ctrl-C) would otherwise leave it running for nobody: we look
    for the disconnect every ``DISCONNECT_POLL_SECONDS`` and cancel the job."""
    waiter = asyncio.ensure_future(service.wait(job_id, owner=owner))
    try:
        while True:
            done, _ = await asyncio.wait({waiter}, timeout=DISCONNECT_POLL_SECONDS)
            if done:
                return waiter.result()
            if await request.is_disconnected():
                await service.cancel(job_id, owner=owner)
                raise ClientGone(f"the client hung up; job {job_id} was cancelled")
    finally:
        waiter.cancel()


async def finished_images(service: JobService, view: JobView, owner: str | None) -> list[bytes]:
    """The PNGs of a completed job; a failed or cancelled job raises its own error again."""
    if view.status is not JobStatus.COMPLETED:
        raise error_for(view.error_code or "generation_failed", view.error_message or "the job failed")
    return [await service.image(view.job_id, index, owner=owner) for index in range(view.image_count)]


def error_for(code: str, message: str) -> SdworkerError:
    """The error class whose ``code`` a failed job recorded (so a 4xx stays a 4xx), else a 500."""
    if code == JobCancelled.code:
        return JobCancelled(message)
    if code == QueueFull.code:
        return QueueFull(message)
    for cls in _subclasses(SdworkerError):
        if cls.code == code and cls is not QueueFull:
            return cls(message)
    return GenerationFailed(message)


def _subclasses(cls: type[SdworkerError]) -> list[type[SdworkerError]]:
    found: list[type[SdworkerError]] = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


def library_entry(model: str | None, fleet: FleetInfo) -> ModelInfo | None:
    """The library entry of ``model`` (None = the default) where the fleet lists its library."""
    entries = fleet.library
    return next((m for m in entries if m.name == model), None) if model else next(
        (m for m in entries if m.is_default), None)


def served_names(fleet: FleetInfo) -> tuple[str, ...]:
    """What a compat door may run: the served models, then the library's other models (a FLUX.1 folder
    beside the default SD one), each once (the default entry is the served ``--model`` already)."""
    names = list(fleet.models)
    names += [m.name for m in fleet.library
              if m.name not in names and not (m.is_default and names) and m.error is None]
    return tuple(names)

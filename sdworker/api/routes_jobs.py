"""Job routes. Thin: get the worker, make one call, shape the result."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response

from sdworker.api.schemas import JobRequest, to_draft
from sdworker.api.sse import EventStreamResponse, event_frames
from sdworker.api.views import job_detail, job_summary
from sdworker.errors import InvalidRequest, JobNotFound
from sdworker.jobs.worker import Worker

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


def _worker(request: Request) -> Worker:
    worker: Worker = request.app.state.worker
    return worker


@router.post("", status_code=202, summary="Submit a job")
async def submit_job(body: JobRequest, request: Request, response: Response) -> dict[str, Any]:
    worker = _worker(request)
    record = await worker.service.submit(to_draft(body, worker.settings))
    response.headers["Location"] = f"/v1/jobs/{record.job_id}"
    position = worker.service.position(record.job_id)
    return {
        "job_id": record.job_id,
        "sse_url": f"/v1/jobs/{record.job_id}/stream",
        "status": "queued",
        "queue_position": position,
    }


@router.get("", summary="Recent and queued jobs, newest first")
async def list_jobs(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    service = _worker(request).service
    return {"jobs": [job_summary(record, service) for record in service.records()[:limit]]}


@router.get("/{job_id}", summary="A job's status, parameters and result")
async def get_job(job_id: str, request: Request) -> dict[str, Any]:
    service = _worker(request).service
    return job_detail(service.get(job_id), service)


@router.delete("/{job_id}", summary="Cancel a job (idempotent: a finished job is returned unchanged)")
async def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    service = _worker(request).service
    return job_detail(service.cancel(job_id), service)


@router.get("/{job_id}/image", summary="The final PNG", response_class=Response)
async def get_image(job_id: str, request: Request, index: Annotated[int, Query(ge=0, le=63)] = 0) -> Response:
    png = _worker(request).service.image(job_id, index)
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get("/{job_id}/stream", summary="Server-Sent Events of a job", response_class=Response)
async def stream_job(
    job_id: str,
    request: Request,
    last_event_id: Annotated[str | None, Header()] = None,
    last_event_id_query: Annotated[str | None, Query(alias="last_event_id")] = None,
) -> Response:
    worker = _worker(request)
    worker.service.get(job_id)  # 404 for an unknown job
    if not worker.bus.knows(job_id):
        raise JobNotFound(f"no event stream for job {job_id!r} (its result expired)", field="job_id")
    after = _event_id(last_event_id, "Last-Event-ID") or _event_id(last_event_id_query, "last_event_id")
    if worker.bus.is_finished(job_id) and after >= worker.bus.last_seq(job_id):
        return Response(status_code=204)  # nothing more will come: browsers stop reconnecting
    gauge = worker.metrics.streams_open
    return EventStreamResponse(
        event_frames(worker.bus.subscribe(job_id, after), worker.settings.keepalive_seconds),
        send_timeout_seconds=worker.settings.watcher_stall_seconds,
        on_open=gauge.inc,
        on_close=gauge.dec,
    )


def _event_id(value: str | None, field: str) -> int:
    if value is None or value == "":
        return 0
    if not value.strip().isdigit():
        raise InvalidRequest(f"{field}: expected a non-negative integer event id, got {value[:40]!r}", field=field)
    return int(value)

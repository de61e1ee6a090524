"""Job routes. Thin: get the job service, make one call, shape the result."""

from __future__ import annotations

import contextlib
import re
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response

from sdworker.api import deps
from sdworker.api.schemas import JobRequest, cancel_after_seconds, to_draft
from sdworker.api.sse import EventStreamResponse, event_frames
from sdworker.api.views import job_detail, job_summary, submit_answer, webhook_view
from sdworker.errors import InvalidRequest
from sdworker.jobs.state import JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

_EVENT_ID = re.compile(r"[0-9]{1,18}", re.ASCII)
EVENT_ID_PATTERN = r"^\s*[0-9]{0,18}\s*$"  # in the schema: what _event_id accepts (blank = from the start)
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}", re.ASCII)
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*([0-9]{1,4})(?:$|[,;\s])", re.ASCII | re.IGNORECASE)
MAX_WAIT_SECONDS = 60


@router.post(
    "", status_code=202, summary="Submit a job",
    responses={201: {"description": "Prefer: wait=N and the job ended within N seconds: the finished job"}},
)
async def submit_job(
    body: JobRequest,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str | None, Header(description="a retried submit with the same key runs no second job")]
    = None,
    cancel_after: Annotated[str | None, Header(description="a deadline such as 30s, 5m or 1h (as deadline_seconds)")]
    = None,
    prefer: Annotated[str | None, Header(description="wait=N (at most 60): answer 201 with the finished job")] = None,
) -> dict[str, Any]:
    key = _checked_idempotency_key(idempotency_key)
    service, owner = deps.service(request), deps.owner(request)
    upscalers = (await service.fleet()).known_upscalers() if body.hires is not None else None
    draft = to_draft(body, deps.settings(request), cancel_after=cancel_after_seconds(cancel_after),
                     upscalers=upscalers)
    view = await service.submit(draft, owner=owner, idempotency_key=key)
    response.headers["Location"] = f"/v1/jobs/{view.job_id}"
    wait = _prefer_wait(prefer)
    if wait is None:
        return submit_answer(view, deps.links(request))
    response.headers["Preference-Applied"] = f"wait={wait}"
    with contextlib.suppress(TimeoutError):
        view = await service.wait(view.job_id, owner=owner, timeout=wait)
    if not view.status.finished:
        return submit_answer(view, deps.links(request))
    response.status_code = 201
    return job_detail(view, deps.links(request))


@router.get("", summary="Recent and queued jobs, newest first")
async def list_jobs(
    request: Request,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[str | None, Query(max_length=64, description="the next page: jobs submitted before this one")]
    = None,
) -> dict[str, Any]:
    views = await deps.service(request).list_jobs(owner=deps.owner(request), limit=limit, before=before)
    answer: dict[str, Any] = {"jobs": [job_summary(view, deps.links(request)) for view in views]}
    if len(views) == limit:
        answer["next"] = f"/v1/jobs?limit={limit}&before={views[-1].job_id}"
    return answer


@router.get("/{job_id}", summary="A job's status, parameters and result")
async def get_job(job_id: str, request: Request) -> dict[str, Any]:
    return job_detail(await deps.service(request).get(job_id, owner=deps.owner(request)), deps.links(request))


@router.delete(
    "/{job_id}",
    summary="Cancel a job (idempotent: a finished job is returned unchanged; 202 while it is cancelling)",
    responses={202: {"description": "Asked to stop: the job is cancelling (its stream's last event says how it ends)"}},
)
async def cancel_job(job_id: str, request: Request, response: Response) -> dict[str, Any]:
    view = await deps.service(request).cancel(job_id, owner=deps.owner(request))
    if view.status is JobStatus.CANCELLING:
        response.status_code = 202  # asked, not yet taken effect: the stream's terminal event says how it ended
    return job_detail(view, deps.links(request))


@router.get("/{job_id}/webhooks", summary="The job's webhooks and every delivery attempt")
async def job_webhooks(job_id: str, request: Request) -> dict[str, Any]:
    messages = await deps.service(request).webhook_messages(job_id, owner=deps.owner(request))
    return {"webhooks": [webhook_view(message) for message in messages]}


@router.get("/{job_id}/image", summary="The final PNG", response_class=Response)
async def get_image(job_id: str, request: Request, index: Annotated[int, Query(ge=0, le=63)] = 0) -> Response:
    png = await deps.service(request).image(job_id, index, owner=deps.owner(request))
    return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})


@router.get(
    "/{job_id}/stream",
    summary="Server-Sent Events of a job",
    response_class=Response,
    responses={
        200: {"description": "The job's events", "content": {"text/event-stream": {"schema": {"type": "string"}}}},
        204: {"description": "Nothing more will come (the stream ended before Last-Event-ID)"},
    },
)
async def stream_job(
    job_id: str,
    request: Request,
    last_event_id: Annotated[str | None, Header(json_schema_extra={"pattern": EVENT_ID_PATTERN})] = None,
    last_event_id_query: Annotated[
        str | None, Query(alias="last_event_id", json_schema_extra={"pattern": EVENT_ID_PATTERN})
    ] = None,
) -> Response:
    after = _event_id(last_event_id, "Last-Event-ID") or _event_id(last_event_id_query, "last_event_id")
    subscription = await deps.service(request).open_stream(job_id, after, owner=deps.owner(request))
    if subscription is None:
        return Response(status_code=204)  # nothing more will come: browsers stop reconnecting
    settings = deps.settings(request)
    gauge = request.app.state.metrics.streams_open
    def closed() -> None:
        # Also when the response never got to start (the client left before the headers): the frame
        # generator then never ran, so its own cleanup would not release the subscription.
        gauge.dec()
        subscription.close()

    return EventStreamResponse(
        event_frames(subscription, settings.keepalive_seconds),
        send_timeout_seconds=settings.watcher_stall_seconds,
        on_open=gauge.inc,
        on_close=closed,
    )


def _prefer_wait(value: str | None) -> int | None:
    """RFC 7240's ``Prefer: wait=N`` in seconds, at most ``MAX_WAIT_SECONDS``; None when not asked."""
    if value is None:
        return None
    match = _PREFER_WAIT.search(value)
    return min(MAX_WAIT_SECONDS, int(match.group(1))) if match else None


def _event_id(value: str | None, field: str) -> int:
    """Event ids are the integers we sent; anything else (``¹``, 4,000 digits) is the client's error."""
    if value is None or value.strip() == "":
        return 0
    if not _EVENT_ID.fullmatch(value.strip()):
        raise InvalidRequest(f"{field}: expected an event id (digits) we sent, got {value[:40]!r}", field=field)
    return int(value.strip())


def _checked_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not _IDEMPOTENCY_KEY.fullmatch(value):
        raise InvalidRequest(
            "Idempotency-Key: 1-255 visible ASCII characters (e.g. a UUID)", field="Idempotency-Key"
        )
    return value

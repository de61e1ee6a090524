"""The fleet: workers, models and the dead-letter list (Redis mode; memory mode answers for itself)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request

from sdworker.api import deps
from sdworker.api.views import job_summary, submit_answer, worker_view

router = APIRouter(tags=["fleet"])


@router.get("/v1/workers", summary="GPU workers with their model, device, status and current job")
async def list_workers(request: Request) -> dict[str, Any]:
    fleet = await deps.service(request).fleet()
    return {"workers": [worker_view(w) for w in fleet.workers], "backend": fleet.backend}


@router.get("/v1/dead", summary="Jobs that ran out of attempts (worker_lost), newest first (admin key)")
async def list_dead(request: Request, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    views = await deps.service(request).dead_letters(limit=limit)
    return {"jobs": [job_summary(view, deps.links(request)) for view in views]}


@router.post(
    "/v1/dead/{job_id}/requeue", status_code=202, summary="Run a dead-lettered job again (a new job; admin key)"
)
async def requeue_dead(job_id: str, request: Request) -> dict[str, Any]:
    return submit_answer(await deps.service(request).requeue(job_id), deps.links(request))

"""JSON views of job records (what ``GET /v1/jobs`` and ``GET /v1/jobs/{id}`` answer)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sdworker.jobs.service import JobService
from sdworker.jobs.state import JobRecord, JobStatus


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_summary(record: JobRecord, service: JobService) -> dict[str, Any]:
    job_id = record.job_id
    summary: dict[str, Any] = {
        "job_id": job_id,
        "status": record.status.value,
        "queue_position": service.position(job_id) if record.status is JobStatus.QUEUED else None,
        "step": record.step,
        "total": record.total,
        "created_at": iso(record.spec.created_at),
        "started_at": iso(record.started_at),
        "finished_at": iso(record.finished_at),
        "sse_url": f"/v1/jobs/{job_id}/stream",
    }
    if record.error_code is not None:
        summary["error"] = {"code": record.error_code, "message": record.error_message}
    return summary


def job_detail(record: JobRecord, service: JobService) -> dict[str, Any]:
    detail = job_summary(record, service)
    detail["parameters"] = record.spec.parameters()
    detail["watchers"] = service.watchers(record.job_id)
    detail["cancel_requested"] = record.cancel.cancelled
    if record.status is JobStatus.COMPLETED:
        detail["seed"] = record.seeds[0]
        detail["seeds"] = list(record.seeds)
        detail["width"], detail["height"] = record.width, record.height
        detail["images"] = [f"/v1/jobs/{record.job_id}/image?index={i}" for i in range(len(record.images))]
        detail["image_url"] = f"/v1/jobs/{record.job_id}/image"
    return detail

"""JSON views of jobs (what ``GET /v1/jobs`` and ``GET /v1/jobs/{id}`` answer). Wire names live here,
not in the job layer."""

from __future__ import annotations

from dataclasses import asdict, fields
from datetime import UTC, datetime
from typing import Any

from sdworker.api.signing import LinkFn, plain_link
from sdworker.domain.codec import to_json
from sdworker.domain.request import Operation
from sdworker.jobs.outbox import WebhookMessage
from sdworker.jobs.spec import JobSpec
from sdworker.jobs.state import JobStatus, JobView, WorkerInfo


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _seconds(start: float | None, end: float | None) -> float | None:
    return None if start is None or end is None else round(max(0.0, end - start), 3)


def submit_answer(view: JobView, link: LinkFn = plain_link) -> dict[str, Any]:
    """The 202 body of ``POST /v1/jobs`` (also for a repeated ``Idempotency-Key``). ``link`` signs the
    URLs for an authenticated caller (``deps.links``)."""
    return {
        "job_id": view.job_id,
        "sse_url": link(view, f"/v1/jobs/{view.job_id}/stream"),
        "status": view.status.value,
        "queue_position": view.queue_position,
    }


def job_summary(view: JobView, link: LinkFn = plain_link) -> dict[str, Any]:
    job_id = view.job_id
    summary: dict[str, Any] = {
        "job_id": job_id,
        "status": view.status.value,
        "queue_position": view.queue_position if view.status is JobStatus.QUEUED else None,
        "step": view.step,
        "total": view.total,
        "created_at": iso(view.spec.created_at),
        "started_at": iso(view.started_at),
        "finished_at": iso(view.finished_at),
        # RunPod's delayTime / executionTime: what an integrator charts per job.
        "queue_seconds": _seconds(view.spec.created_at, view.started_at),
        "run_seconds": _seconds(view.started_at, view.finished_at),
        "sse_url": link(view, f"/v1/jobs/{job_id}/stream"),
    }
    if view.attempt > 1:
        summary["attempt"] = view.attempt
    if view.error_code is not None:
        summary["error"] = {"code": view.error_code, "message": view.error_message}
    if view.spec.deadline_at is not None:
        summary["deadline_at"] = iso(view.spec.deadline_at)
    summary["expires_at"] = iso(link.expires_at(view))  # the result (and every URL to it) is gone then
    return summary


def job_detail(view: JobView, link: LinkFn = plain_link) -> dict[str, Any]:
    detail = job_summary(view, link)
    detail["parameters"] = parameters(view.spec)
    detail["warnings"] = list(view.spec.warnings)  # what the model's family ignores of the request
    detail["watchers"] = view.watchers
    detail["cancel_requested"] = view.cancel_requested
    detail["attempt"] = view.attempt
    if view.spec.webhook is not None:
        detail["webhook"] = {"url": view.spec.webhook.url, "events": list(view.spec.webhook.events)}
    if view.worker is not None:
        detail["worker"] = view.worker
    if view.status is JobStatus.COMPLETED:
        detail["seed"] = view.seeds[0]
        detail["seeds"] = list(view.seeds)
        detail["width"], detail["height"] = view.width, view.height
        detail["images"] = [link.image(view, i) for i in range(view.image_count)]
        detail["image_url"] = link.image(view)
    return detail


# Wire names of request fields where the API's differ from the engine's (diffusers') names.
_WIRE_NAMES = {"num_inference_steps": "steps", "num_images": "n"}
_NOT_SHOWN = frozenset({"init_image", "mask_image", "reference_images"})  # bytes; gone once the job finished


def parameters(spec: JobSpec) -> dict[str, Any]:
    """The job's parameters (no image bytes): every field of its request under its wire name, so a new
    request field shows up here without an edit."""
    request = spec.request
    params: dict[str, Any] = {}
    for item in fields(request):
        value = getattr(request, item.name)
        if item.name in _NOT_SHOWN:
            continue
        params[_WIRE_NAMES.get(item.name, item.name)] = to_json(value)
    if request.operation in (Operation.TEXT_TO_IMAGE, Operation.EDIT, Operation.UPSCALE):
        del params["strength"]
    if request.operation is Operation.EDIT:
        params["reference_images"] = len(request.reference_images)  # how many, not their bytes
    params["loras"] = [{"path": ref.name, "strength": ref.weight} for ref in request.loras]
    params["controlnet"] = [  # the units without their image bytes
        {k: v for k, v in unit.items() if k != "image"} for unit in params["controlnet"]
    ]
    if request.ip_adapter is not None:  # the adapter without its image bytes
        params["ip_adapter"] = {"model": request.ip_adapter.model, "scale": request.ip_adapter.scale,
                                "images": len(request.ip_adapter.images)}
    for key in ("hive_id", "worker_id"):
        if getattr(spec, key) is not None:
            params[key] = getattr(spec, key)
    params["preview"] = {k: v for k, v in asdict(spec.preview).items() if k != "defaulted"}
    return params


def worker_view(worker: WorkerInfo) -> dict[str, Any]:
    return {
        "id": worker.id,
        "model_id": worker.model,
        "device": worker.device,
        "status": worker.status,
        "current_job": worker.current_job,
        "last_seen": iso(worker.last_seen),
        "implementation": "sdworker",
        "version": worker.version,
    }


def webhook_view(message: WebhookMessage) -> dict[str, Any]:
    """One webhook of ``GET /v1/jobs/{id}/webhooks``: its id (the ``webhook-id`` of every attempt), its
    event, its state and each attempt (the receiver's HTTP status, or why no answer came)."""
    return {
        "id": message.message_id,
        "event": message.event,
        "url": message.url,
        "state": message.state,
        "created_at": iso(message.created_at),
        "next_attempt_at": iso(message.next_at) if message.state == "pending" else None,
        "attempts": [{"at": iso(a.at), "status": a.status, "error": a.error} for a in message.attempts],
    }

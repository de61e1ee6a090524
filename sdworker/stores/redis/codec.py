"""Between Redis and the job layer's values: event stream entries to event records, job hashes to
``JobView``, worker registry entries to ``WorkerInfo``. Redis hands back bytes; everything is decoded
here."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from sdworker.domain.batch_plan import batch_key
from sdworker.domain.catalog import EngineInfo, LoraInfo, ModelInfo
from sdworker.domain.checks import Limits
from sdworker.domain.prompt_length import PromptTokenizer
from sdworker.domain.request import GenerationRequest, Operation
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
)
from sdworker.jobs.spec import JobSpec
from sdworker.jobs.state import JobStatus, JobView, WorkerInfo


def text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value


def seq_of(entry_id: bytes | str) -> int:
    """Our stream ids are ``0-<seq>``."""
    return int((text(entry_id) or "0-0").split("-", 1)[1])


def event_fields(event: JobEvent) -> tuple[str, dict[str, Any], int, int, bytes | None]:
    """What the worker appends: (kind, data, step, total, preview image)."""
    match event:
        case PreviewReady():
            data = {
                "step": event.step,
                "total": event.total,
                "format": event.format,
                "width": event.width,
                "height": event.height,
                "method": event.method,
                "pass": event.pass_number,
            }
            return "preview", data, event.step, event.total, event.image
        case StepProgressed(step=step, total=total):
            return "progress", {"step": step, "total": total, "pass": event.pass_number}, step, total, None
        case ModelLoading(model=model, phase=phase, seconds=seconds):
            return "loading_model", {"model": model, "phase": phase, "seconds": seconds}, 0, 0, None
        case _:
            raise TypeError(f"a worker does not publish {type(event).__name__}")


def decode_event(
    job_id: str, entry_id: bytes | str, fields: dict[bytes, bytes], preview: tuple[int, bytes] | None,
    images: tuple[bytes, ...],
) -> JobEvent | None:
    """One stream entry as an event record. ``preview`` is the job's latest preview (seq, image): a
    preview entry whose seq it is keeps its image; older ones read as their step's progress.
    ``images`` are the final PNGs, needed only for the ``complete`` entry."""
    kind = text(fields.get(b"t"))
    data = json.loads(fields.get(b"d") or b"{}")
    base: dict[str, Any] = {"job_id": job_id, "seq": seq_of(entry_id), "at": float(fields.get(b"at") or 0.0)}
    match kind:
        case "queued":
            return JobQueued(**base, position=int(data["position"]))
        case "started":
            return JobStarted(**base, attempt=int(data.get("attempt", 1)), worker=data.get("worker"))
        case "retrying":
            return JobRetrying(**base, attempt=int(data["attempt"]), reason=str(data["reason"]))
        case "loading_model":
            return ModelLoading(**base, model=str(data["model"]), phase=str(data["phase"]),
                                seconds=float(data["seconds"]))
        case "progress":
            return StepProgressed(**base, step=int(data["step"]), total=int(data["total"]),
                                  pass_number=int(data.get("pass", 1)))
        case "preview":
            if preview is not None and preview[0] == base["seq"]:
                return PreviewReady(
                    **base,
                    step=int(data["step"]),
                    total=int(data["total"]),
                    image=preview[1],
                    format=str(data["format"]),
                    width=int(data["width"]),
                    height=int(data["height"]),
                    method=str(data["method"]),
                    pass_number=int(data.get("pass", 1)),
                )
            return StepProgressed(**base, step=int(data["step"]), total=int(data["total"]),
                                  pass_number=int(data.get("pass", 1)))
        case "complete":
            seeds = tuple(int(s) for s in data["seeds"])
            return JobCompleted(
                **base, images=images, seed=seeds[0], seeds=seeds, width=int(data["width"]), height=int(data["height"])
            )
        case "error":
            return JobFailed(**base, code=str(data["code"]), message=str(data["message"]))
        case "end":
            return JobEnded(**base, marker=str(data["marker"]))
        case _:
            return None  # a kind this node does not know (a newer worker): skipped, not a crash


def job_view(fields: dict[bytes, bytes], *, position: int | None, watchers: int) -> JobView:
    f = {k.decode(): v for k, v in fields.items()}
    spec = JobSpec.from_dict(json.loads(f["spec"]))

    def number(name: str) -> float | None:
        value = f.get(name)
        return float(value) if value not in (None, b"") else None

    status = JobStatus(f["state"].decode())
    seeds = tuple(json.loads(f["seeds"])) if f.get("seeds") else ()
    control = text(f.get("control")) or ""
    return JobView(
        spec=spec,
        status=status,
        step=int(f.get("step", b"0")),
        total=int(f.get("total", b"0")),
        attempt=int(f.get("attempt", b"0")),
        queue_position=position,
        started_at=number("started") if status is not JobStatus.QUEUED else None,
        finished_at=number("finished"),
        error_code=text(f.get("error_code")),
        error_message=text(f.get("error_message")),
        image_count=int(f.get("images", b"0")),
        seeds=seeds,
        width=int(f["width"]) if f.get("width") else None,
        height=int(f["height"]) if f.get("height") else None,
        watchers=watchers,
        cancel_requested=control != "",
        worker=text(f.get("worker")) or None,
    )


def worker_record(info: WorkerInfo, engine: EngineInfo | None, library: dict[str, Any] | None = None,
                  limits: Limits | None = None) -> str:
    record: dict[str, Any] = {
        "id": info.id,
        "model": info.model,
        "device": info.device,
        "status": info.status,
        "current_job": info.current_job,
        "last_seen": info.last_seen,
        "version": info.version,
        "reason": info.reason,
    }
    if engine is not None:
        record["engine"] = {
            "model": engine.model,
            "family": engine.family,
            "device": engine.device,
            "dtype": engine.dtype,
            "schedulers": list(engine.schedulers),
            "default_scheduler": engine.default_scheduler,
            "preview_methods": list(engine.preview_methods),
            "operations": [op.value for op in engine.operations],
        }
    if library is not None:
        record["library"] = library
    if limits is not None:
        record["limits"] = dataclasses.asdict(limits)
    return json.dumps(record)


def parse_limits(raw: bytes) -> Limits | None:
    """The job limits a worker registered (its own ``--max-pixels``, ``--max-steps``, ``--max-images``)."""
    limits = json.loads(raw).get("limits")
    if not limits:
        return None
    return Limits(max_steps=int(limits["max_steps"]), max_images=int(limits["max_images"]),
                  max_pixels=int(limits["max_pixels"]))


@dataclasses.dataclass(frozen=True, slots=True)
class GuidanceNames:
    """The guidance models a worker has (its --controlnet-dir, --upscalers-dir, --ip-adapter-dir), by name:
    registered with its library so an API node checks a job's names without those folders."""

    controlnets: tuple[str, ...] = ()
    upscalers: tuple[str, ...] = ()
    ip_adapters: tuple[str, ...] = ()


def library_record(
    models: tuple[ModelInfo, ...], loras: tuple[LoraInfo, ...], guidance: GuidanceNames = GuidanceNames()
) -> dict[str, Any]:
    """A worker's model library as its registry entry lists it (names and headers' facts, no paths)."""
    return {
        "controlnets": list(guidance.controlnets),
        "upscalers": list(guidance.upscalers),
        "ip_adapters": list(guidance.ip_adapters),
        "models": [
            {"name": m.name, "family": m.family, "kind": m.kind, "native_size": m.native_size, "loaded": m.loaded,
             "default": m.is_default, "sha256": m.sha256, "variant": m.variant, "default_steps": m.default_steps,
             "default_guidance": m.default_guidance, "size_multiple": m.size_multiple, "size_bytes": m.size_bytes,
             "too_large": m.too_large, "error": m.error, "prompt_tokenizer": _tokenizer_record(m.prompt_tokenizer)}
            for m in models
        ],
        "loras": [{"name": lora.name, "family": lora.family, "format": lora.format} for lora in loras],
    }


def parse_library(raw: bytes) -> tuple[tuple[ModelInfo, ...], tuple[LoraInfo, ...]]:
    """The library of a registry entry; empty for a worker that registered none (an older one)."""
    library = json.loads(raw).get("library") or {}
    models = tuple(
        ModelInfo(str(m["name"]), str(m["family"]), str(m.get("kind", "")), "", int(m["native_size"]),
                  loaded=bool(m.get("loaded")), is_default=bool(m.get("default")), sha256=m.get("sha256"),
                  variant=str(m.get("variant", "")), default_steps=int(m.get("default_steps", 20)),
                  default_guidance=float(m.get("default_guidance", 7.5)), size_multiple=int(m.get("size_multiple", 8)),
                  size_bytes=int(m["size_bytes"]) if m.get("size_bytes") is not None else None,
                  too_large=str(m["too_large"]) if m.get("too_large") else None,
                  error=str(m["error"]) if m.get("error") else None,
                  prompt_tokenizer=_parse_tokenizer(m.get("prompt_tokenizer")))
        for m in library.get("models", ())
    )
    loras = tuple(
        LoraInfo(str(lora["name"]), "", lora.get("family"), str(lora.get("format", "unknown")))
        for lora in library.get("loras", ())
    )
    return models, loras


def _tokenizer_record(registered: PromptTokenizer | None) -> dict[str, str] | None:
    if registered is None:
        return None
    return {"sha256": registered.sha256, "prefix": registered.prefix, "suffix": registered.suffix}


def _parse_tokenizer(raw: Any) -> PromptTokenizer | None:
    if not isinstance(raw, dict) or not raw.get("sha256"):
        return None
    return PromptTokenizer(str(raw["sha256"]), str(raw.get("prefix", "")), str(raw.get("suffix", "")))
def parse_guidance(raw: bytes) -> GuidanceNames:
    """The guidance model names of a registry entry; none for a worker that registered none (an older one)."""
    library = json.loads(raw).get("library") or {}

    def names(key: str) -> tuple[str, ...]:
        return tuple(str(name) for name in library.get(key, ()) if isinstance(name, str))

    return GuidanceNames(names("controlnets"), names("upscalers"), names("ip_adapters"))


def parse_worker(raw: bytes) -> tuple[WorkerInfo, EngineInfo | None]:
    data = json.loads(raw)
    info = WorkerInfo(
        id=data["id"],
        model=data["model"],
        device=data["device"],
        status=data["status"],
        current_job=data.get("current_job"),
        last_seen=float(data["last_seen"]),
        version=data.get("version", ""),
        reason=data.get("reason"),
    )
    engine = None
    if data.get("engine"):
        e = data["engine"]
        engine = EngineInfo(
            model=e["model"],
            family=e["family"],
            device=e["device"],
            dtype=e["dtype"],
            schedulers=tuple(e["schedulers"]),
            default_scheduler=e["default_scheduler"],
            preview_methods=tuple(e["preview_methods"]),
            operations=tuple(Operation(op) for op in e["operations"]),
        )
    return info, engine


def batch_key_text(request: GenerationRequest) -> str:
    """The job's batch key as stored with it (``bkey``): two jobs may share UNet calls exactly when
    these are equal and not empty (``can_share_unet``'s rule, ``domain/batch_plan.py``)."""
    key = batch_key(request)
    return "" if key is None else json.dumps(dataclasses.astuple(key))

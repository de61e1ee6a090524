"""What both backends do to a draft before it is queued: checks against the engine that will run it,
the images' check (``inputs``), the seed drawn, the model resolved, the spec built."""

from __future__ import annotations

import secrets

from sdworker.engine.protocol import EngineInfo
from sdworker.errors import ModelNotFound, UnknownScheduler, Unsupported
from sdworker.jobs.inputs import CheckedInputs
from sdworker.jobs.spec import JobDraft, JobSpec

MAX_SEED = 2**32 - 1  # the engine's range; a drawn seed is reported back and reproduces the image


def draw_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def check_against_engine(draft: JobDraft, info: EngineInfo | None) -> None:
    """Refuse what the engine cannot do, at submit (not as a failed job later)."""
    if info is None:
        return  # still loading: the engine checks again when the job runs
    if draft.scheduler is not None and draft.scheduler not in info.schedulers:
        raise UnknownScheduler(
            f"scheduler {draft.scheduler!r} is not one of: {', '.join(info.schedulers)}", field="scheduler"
        )
    method = draft.preview.method
    if method in ("taesd", "vae", "latent2rgb") and method not in info.preview_methods:
        hint = " (start the server with --taesd PATH)" if method == "taesd" else ""
        raise Unsupported(
            f"preview.method {method!r} is not available on this server{hint}; "
            f"available: auto, none, {', '.join(info.preview_methods)}",
            field="preview.method",
        )


def resolve_model(requested: str | None, served: dict[str, str], default: str | None) -> str:
    """The model id a job runs on. ``served`` maps every accepted name (a model's id, and its short
    label) to the id; ``default`` is used when the job names none."""
    if requested is None:
        if default is None:
            raise ModelNotFound("model: no worker serves any model right now", field="model")
        return default
    model = served.get(requested)
    if model is None:
        names = ", ".join(sorted(set(served.values()))) or "none"
        raise ModelNotFound(f"model: {requested!r} is not served here; served: {names}", field="model")
    return model


def build_spec(
    draft: JobDraft,
    checked: CheckedInputs,
    *,
    job_id: str,
    created_at: float,
    owner: str | None,
    model: str | None,
) -> JobSpec:
    return JobSpec(
        job_id=job_id,
        prompt=draft.prompt,
        operation=draft.operation,
        negative_prompt=draft.negative_prompt,
        num_inference_steps=draft.num_inference_steps,
        guidance_scale=draft.guidance_scale,
        width=checked.width,
        height=checked.height,
        seed=draft.seed if draft.seed is not None else draw_seed(),
        scheduler=draft.scheduler,
        num_images=draft.num_images,
        strength=draft.strength,
        preview=draft.preview,
        created_at=created_at,
        init_image=checked.init_image,
        init_image_field=draft.init_image_field,
        mask_image=checked.mask_image,
        owner=owner,
        model=model,
        hive_id=draft.hive_id,
        worker_id=draft.worker_id,
        loras=draft.loras,
        clip_skip=draft.clip_skip,
    )

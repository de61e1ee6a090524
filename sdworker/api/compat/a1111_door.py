"""The A1111 front door: ``txt2img``/``img2img`` become one ordinary job each; the waiting call answers
A1111's ``{images, parameters, info}``. Also interrupt/skip and the checkpoint choice. The routes in
``a1111_routes`` only call these."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from PIL import Image

from sdworker import __version__
from sdworker.api import deps
from sdworker.api.compat.a1111_controlnet import units_from
from sdworker.api.compat.a1111_samplers import choose
from sdworker.api.compat.a1111_schemas import (
    Img2ImgRequest,
    Txt2ImgRequest,
    check_texts,
    echoed,
    family_guidance,
    family_sampler,
    ignored,
    to_draft,
)
from sdworker.api.compat.a1111_state import A1111State, checkpoints, find_checkpoint
from sdworker.api.compat.jobs import finished_images, library_entry, served_names, wait_or_cancel
from sdworker.domain.request import InputImage
from sdworker.errors import InvalidRequest
from sdworker.imaging.decode import decode_base64
from sdworker.imaging.masks import adjust_mask, fit_image
from sdworker.imaging.metadata import PNG_KEY
from sdworker.jobs.state import JobStatus, JobView

DEFAULT_MASK_BLUR = 4  # A1111's mask_blur_x/y default


def a1111_state(request: Request) -> A1111State:
    state: A1111State = request.app.state.a1111
    return state


async def generate(request: Request, body: Txt2ImgRequest) -> dict[str, Any]:
    service, settings, owner = deps.service(request), deps.settings(request), deps.owner(request)
    check_texts(body.model_dump(exclude={"init_images", "mask"}))
    fleet = await service.fleet()
    model = await _model(request, body, served_names(fleet))
    entry = library_entry(model, fleet)
    family = entry.family if entry is not None else None
    sampler = choose(body.sampler_name or body.sampler_index, body.scheduler, _schedulers(fleet.engine))
    sampler = family_sampler(sampler, body, family)
    guidance, family_notes = family_guidance(body, family)
    init, mask = _given_images(body)
    # The job's bounds (sizes against --max-pixels first) before any image is decoded or resized.
    draft = to_draft(body, settings, sampler=sampler, model=model, init_image=init, mask_image=mask,
                     guidance=guidance, multiple=entry.size_multiple if entry is not None else 8,
                     upscalers=fleet.known_upscalers())
    if isinstance(body, Img2ImgRequest):
        init, mask = await _img2img_inputs(body, settings.max_pixels)
        draft = replace(draft, request=replace(draft.request, init_image=init, mask_image=mask))
    assert draft.request.width is not None and draft.request.height is not None  # the door sets them
    size = (draft.request.width, draft.request.height)
    units = await units_from(body.alwayson_scripts, size, fleet.controlnets, settings.max_pixels, fleet.ip_adapters,
                             hires=draft.request.hires is not None)
    if units.units or units.ip_adapter is not None:
        draft = replace(draft, request=replace(draft.request, controlnet=units.units, ip_adapter=units.ip_adapter))
    notes = {**ignored(body), **sampler.ignored, **family_notes, **units.notes}
    # A field that would change the image and is not honoured is a warning of the job too (GET /v1/jobs/{id}).
    draft = replace(draft, warnings=tuple(f"{name}: {note}" for name, note in notes.items()))
    try:
        view = await service.submit(draft, owner=owner)
    except InvalidRequest as error:  # the engine's checks name native unit fields; the client sent the extension's
        raise units.door_error(error) from None
    view = await wait_or_cancel(service, view.job_id, request, owner)
    pngs = await finished_images(service, view, owner)
    known = await checkpoints((view.spec.request.model or settings.model,), settings.cache_dir)
    info = _info(body, view, pngs, sampler.sampler, sampler.schedule, known[0].model_name, known[0].hash10, notes)
    return {
        "images": [base64.b64encode(png).decode("ascii") for png in pngs] if body.send_images else [],
        "parameters": echoed(body),
        "info": json.dumps(info),
    }


async def interrupt(request: Request) -> None:
    """A1111's interrupt (and skip): every running job the caller can see stops at its next step and
    completes with the image it has; its waiting call answers 200 with that image."""
    service, owner = deps.service(request), deps.owner(request)
    for view in await service.list_jobs(owner=owner, limit=1000):
        if view.status is JobStatus.RUNNING:
            await service.interrupt(view.job_id, owner=owner)


async def choose_checkpoint(request: Request, wanted: str) -> None:
    settings = deps.settings(request)
    known = await checkpoints(served_names(await deps.service(request).fleet()), settings.cache_dir)
    a1111_state(request).checkpoint = find_checkpoint(known, wanted).model


async def _model(request: Request, body: Txt2ImgRequest, models: tuple[str, ...]) -> str | None:
    """``override_settings.sd_model_checkpoint`` for this call, else the chosen checkpoint."""
    wanted = (body.override_settings or {}).get("sd_model_checkpoint")
    if isinstance(wanted, str) and wanted:
        known = await checkpoints(models, deps.settings(request).cache_dir)
        return find_checkpoint(known, wanted).model
    chosen = a1111_state(request).checkpoint
    return chosen if chosen in models else None


def _given_images(body: Txt2ImgRequest) -> tuple[InputImage | None, InputImage | None]:
    """The client's img2img images as given (base64 text, not decoded yet)."""
    if not isinstance(body, Img2ImgRequest):
        return None, None
    if not body.init_images:
        raise InvalidRequest("init_images: img2img needs at least one image (base64)", field="init_images")
    return InputImage(body.init_images[0], "init_images"), InputImage(body.mask, "mask") if body.mask else None


async def _img2img_inputs(body: Img2ImgRequest, max_pixels: int) -> tuple[InputImage, InputImage | None]:
    """The init image (and mask, white = repaint) fitted to the output size by ``resize_mode``, the mask
    inverted and blurred as asked; PNG. A plain img2img (``resize_mode`` 0, no mask) passes the
    client's image through untouched (the engine resizes it)."""
    if not body.init_images:
        raise InvalidRequest("init_images: img2img needs at least one image (base64)", field="init_images")
    init = decode_base64(body.init_images[0], field="init_images")
    mask = decode_base64(body.mask, field="mask") if body.mask else None
    if mask is None and body.resize_mode in (0, 3):
        return InputImage(init, "init_images"), None
    size = (max(8, body.width // 8 * 8), max(8, body.height // 8 * 8))
    mode = body.resize_mode if body.resize_mode in (1, 2) else 0

    def prepare() -> tuple[bytes, bytes | None]:
        fitted = fit_image(init, size, mode, field="init_images", max_pixels=max_pixels)
        if mask is None:
            return fitted, None
        blur = DEFAULT_MASK_BLUR if body.mask_blur is None else body.mask_blur
        invert = body.inpainting_mask_invert == 1
        # Blur at the mask's own resolution (as A1111 does), then fit it like the image.
        adjusted = adjust_mask(mask, field="mask", max_pixels=max_pixels, invert=invert, blur=blur)
        return fitted, fit_image(adjusted, size, mode, field="mask", max_pixels=max_pixels)

    fitted, fitted_mask = await asyncio.to_thread(prepare)
    return InputImage(fitted, "init_images"), InputImage(fitted_mask, "mask") if fitted_mask is not None else None


def _schedulers(engine: Any) -> tuple[str, ...] | None:
    return tuple(engine.schedulers) if engine is not None else None


def infotext(png: bytes) -> str:
    """The PNG's ``parameters`` chunk: ``infotexts`` are exactly what ``/png-info`` reads back."""
    with Image.open(io.BytesIO(png)) as image:
        return str(image.info.get(PNG_KEY, ""))


def _info(
    body: Txt2ImgRequest,
    view: JobView,
    pngs: list[bytes],
    sampler: str,
    schedule: str,
    model_name: str,
    model_hash: str | None,
    notes: dict[str, str],
) -> dict[str, Any]:
    spec = view.spec
    count = len(pngs)
    strength = spec.request.strength if isinstance(body, Img2ImgRequest) else body.denoising_strength
    return {
        "prompt": spec.request.prompt,
        "all_prompts": [spec.request.prompt] * count,
        "negative_prompt": spec.request.negative_prompt,
        "all_negative_prompts": [spec.request.negative_prompt] * count,
        "seed": view.seeds[0],
        "all_seeds": list(view.seeds),
        "subseed": body.subseed,
        "all_subseeds": [body.subseed] * count,
        "subseed_strength": body.subseed_strength,
        "width": view.width,
        "height": view.height,
        "sampler_name": sampler,
        "cfg_scale": spec.request.guidance_scale,
        "steps": spec.request.num_inference_steps,
        "batch_size": body.batch_size,
        "restore_faces": False,
        "face_restoration_model": None,
        "sd_model_name": model_name,
        "sd_model_hash": model_hash,
        "sd_vae_name": None,
        "sd_vae_hash": None,
        "seed_resize_from_w": -1,
        "seed_resize_from_h": -1,
        "denoising_strength": strength,
        "extra_generation_params": {"Schedule type": schedule},
        "index_of_first_image": 0,
        "infotexts": [infotext(png) for png in pngs],
        "styles": [],
        "job_timestamp": _timestamp(view),
        "clip_skip": spec.request.clip_skip or 1,
        "is_using_inpainting_conditioning": False,
        "version": f"sdworker {__version__}",
        "job_id": spec.job_id,
        "ignored": notes,
    }


def _timestamp(view: JobView) -> str:
    return datetime.fromtimestamp(view.started_at or view.spec.created_at, UTC).strftime("%Y%m%d%H%M%S")

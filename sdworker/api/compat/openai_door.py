"""The OpenAI Images front door: a request becomes one ordinary job; its result (or its events, when
streamed) comes back in OpenAI's shapes. The routes in ``openai_routes`` only call ``run``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile

from sdworker.api import deps
from sdworker.api.compat.jobs import finished_images, wait_or_cancel
from sdworker.api.compat.openai_render import Rendering, images_response, stream_frames
from sdworker.api.compat.openai_schemas import (
    QUALITY_REPORTED,
    ImagesRequest,
    parse_fields,
    to_draft,
    with_partial_images,
)
from sdworker.api.sse import EventStreamResponse
from sdworker.domain.parameters import model_label
from sdworker.domain.request import InputImage
from sdworker.errors import InvalidRequest, JobNotFound
from sdworker.imaging.decode import decode_base64
from sdworker.imaging.masks import mask_from_alpha
from sdworker.jobs.state import JobStatus

_FILE_FIELDS = ("image", "image[]", "mask")


@dataclass(frozen=True, slots=True)
class EditInputs:
    body: ImagesRequest
    image: InputImage
    mask: InputImage | None  # ours (white = repaint)


async def read_edit_form(request: Request) -> EditInputs:
    """``images.edit``'s multipart body: ``image`` or repeated ``image[]`` (the first is edited), an
    optional ``mask`` (transparent = repaint; converted to ours), the rest as string fields."""
    settings = deps.settings(request)
    form = await request.form(max_files=32, max_fields=200, max_part_size=settings.max_body_bytes)
    images = [*form.getlist("image"), *form.getlist("image[]")]
    if not images:
        raise InvalidRequest("image: required (a PNG, WebP or JPEG file)", field="image")
    fields = {key: value for key, value in form.multi_items() if isinstance(value, str) and key not in _FILE_FIELDS}
    body = parse_fields(fields)
    image = await _file_bytes(images[0], "image")
    mask = form.get("mask")
    mask_image = None
    if mask is not None:
        mask_png = await asyncio.to_thread(
            mask_from_alpha, await _file_bytes(mask, "mask"), field="mask", max_pixels=settings.max_pixels
        )
        mask_image = InputImage(mask_png, "mask")
    return EditInputs(body, InputImage(image, "image"), mask_image)


async def run(request: Request, body: ImagesRequest, *, kind: str, edit: EditInputs | None = None) -> Response:
    service, settings, owner = deps.service(request), deps.settings(request), deps.owner(request)
    fleet = await service.fleet()
    family = fleet.engine.family if fleet.engine is not None else None
    draft = to_draft(
        body, settings, model=served_model(body.model, fleet.models), family=family,
        init_image=edit.image if edit else None, mask_image=edit.mask if edit else None,
    )
    fmt = body.output_format or "png"
    targets: list[int] = []
    if body.stream:
        draft, targets = with_partial_images(draft, body.partial_images or 0, settings, fmt)
    view = await service.submit(draft, owner=owner)
    size = f"{view.spec.request.width}x{view.spec.request.height}"
    rendering = Rendering(fmt, body.output_compression, QUALITY_REPORTED[body.quality or "auto"], size)
    if body.stream:
        sub = await service.open_stream(view.job_id, 0, owner=owner)
        if sub is None:
            raise JobNotFound(f"job {view.job_id} has no event stream", field="job_id")
        frames = stream_frames(
            service, sub, kind=kind, rendering=rendering, targets=targets, owner=owner,
            keepalive_seconds=settings.keepalive_seconds,
        )
        gauge = request.app.state.metrics.streams_open
        return EventStreamResponse(
            frames, send_timeout_seconds=settings.watcher_stall_seconds, on_open=gauge.inc, on_close=gauge.dec
        )
    view = await wait_or_cancel(service, view.job_id, request, owner)
    urls = None
    if body.response_format == "url" and view.status is JobStatus.COMPLETED:
        base = (settings.public_url or str(request.base_url)).rstrip("/")
        link = deps.links(request)  # signed for an authenticated caller: the URL is fetched without a key
        urls = [base + link(view, f"/v1/jobs/{view.job_id}/image?index={index}") for index in range(view.image_count)]
    pngs = [] if urls is not None else await finished_images(service, view, owner)
    return JSONResponse(await images_response(pngs, rendering, model=view.spec.request.model, urls=urls))


def served_model(requested: str | None, models: tuple[str, ...]) -> str | None:
    """The served model a request names (by id or short label); None (= the default) for any other
    name: OpenAI clients send ``gpt-image-1`` or ``dall-e-3`` and expect an image, not a 404."""
    if requested is None:
        return None
    for model in models:
        if requested in (model, model_label(model)):
            return model
    return None


async def _file_bytes(value: UploadFile | str, field: str) -> bytes:
    if isinstance(value, str):  # some clients send the image as base64 text
        return decode_base64(value, field=field)
    return await value.read()

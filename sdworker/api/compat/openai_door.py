"""The OpenAI Images front door: a request becomes one ordinary job; its result (or its events, when
streamed) comes back in OpenAI's shapes. The routes in ``openai_routes`` only call ``run``."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, replace

from fastapi import Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from sdworker.api import deps
from sdworker.api.compat.jobs import finished_images, library_entry, served_names, wait_or_cancel
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
MAX_FILES = 32


@dataclass(frozen=True, slots=True)
class EditInputs:
    body: ImagesRequest
    images: tuple[InputImage, ...]  # all of them: an edit model takes several as references
    mask: InputImage | None  # OpenAI's (transparent = repaint) until ``run`` converts it


async def read_edit_form(request: Request) -> EditInputs:
    """``images.edit``'s multipart body: ``image`` or repeated ``image[]`` (on an edit model all are
    references; otherwise the first is edited), an optional ``mask`` (transparent = repaint; converted
    to ours), the rest as string fields."""
    settings = deps.settings(request)
    try:
        form = await request.form(max_files=MAX_FILES, max_fields=200, max_part_size=settings.max_body_bytes)
    except HTTPException as exc:  # Starlette's multipart limits and parse errors: the client's form
        raise InvalidRequest(f"body: {exc.detail} (a multipart form: image, mask, text fields)", field="body") from None
    images = [*form.getlist("image"), *form.getlist("image[]")]
    if not images:
        raise InvalidRequest("image: required (a PNG, WebP or JPEG file)", field="image")
    fields = {key: value for key, value in form.multi_items() if isinstance(value, str) and key not in _FILE_FIELDS}
    body = parse_fields(fields)
    field = "image" if form.getlist("image") else "image[]"
    files = tuple([InputImage(await _file_bytes(image, field), field) for image in images])
    mask = form.get("mask")
    # The client's mask as sent (transparent = repaint): converted to ours in ``run``, after the job's
    # bounds are checked, so nothing is decoded for a request that is refused anyway.
    mask_image = InputImage(await _file_bytes(mask, "mask"), "mask") if mask is not None else None
    return EditInputs(body, files, mask_image)


async def run(request: Request, body: ImagesRequest, *, kind: str, edit: EditInputs | None = None) -> Response:
    service, settings, owner = deps.service(request), deps.settings(request), deps.owner(request)
    fleet = await service.fleet()
    model = served_model(body.model, served_names(fleet))
    draft = to_draft(
        body, settings, model=model, entry=library_entry(model, fleet),
        images=edit.images if edit else (), mask_image=edit.mask if edit else None,
    )
    if edit is not None and edit.mask is not None:
        limit = settings.max_pixels
        ours = await asyncio.to_thread(mask_from_alpha, edit.mask.encoded(), field="mask", max_pixels=limit)
        draft = replace(draft, request=replace(draft.request, mask_image=InputImage(ours, "mask")))
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
    if body.answers_with_url() and view.status is JobStatus.COMPLETED:
        base = (settings.public_url or str(request.base_url)).rstrip("/")
        link = deps.links(request)  # signed for an authenticated caller (or presigned in the bucket): no key needed
        urls = [absolute(base, link.image(view, index)) for index in range(view.image_count)]
    pngs = [] if urls is not None else await finished_images(service, view, owner)
    return JSONResponse(await images_response(pngs, rendering, model=view.spec.request.model, urls=urls))


def absolute(base: str, url: str) -> str:
    """A presigned bucket URL is absolute already; our own paths get the public base."""
    return url if url.startswith(("http://", "https://")) else base + url


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

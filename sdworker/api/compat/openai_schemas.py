"""OpenAI Images requests (``/v1/images/generations`` JSON, ``/v1/images/edits`` multipart) and their
translation to a ``JobDraft``.

Lenient on purpose, unlike ``/v1/jobs``: the SDK, Open WebUI and LibreChat send fields we have no use
for (``moderation``, ``style``, ``user``, ``background``, admin-configured extras), and multipart
values arrive as strings (``"2"``, ``"true"``), so unknown fields are ignored and values are coerced.
Values we do use are checked and a bad one is a 400 naming it in ``param``.

``quality`` is a step count (``QUALITY_STEPS``); ``model`` names a served model or falls back to the
default (OpenAI clients send ``gpt-image-1``, ``dall-e-3``); ``size`` ``auto`` is the model's native
size (an edit's: its image's). sdworker's own knobs ride in the body too (the SDK's ``extra_body``):
``seed``, ``steps``, ``negative_prompt``, ``guidance_scale``, ``scheduler``, ``strength``.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sdworker.api.schemas import job_limits, preview_options
from sdworker.domain.catalog import ModelInfo
from sdworker.domain.checks import MAX_SEED, check_job
from sdworker.domain.edit import check_edit_model, edit_model
from sdworker.domain.request import GenerationRequest, InputImage, Operation
from sdworker.errors import InvalidRequest
from sdworker.jobs.spec import JobDraft
from sdworker.previews.options import PreviewOptions
from sdworker.settings import Settings

# Steps per quality. OpenAI's own scale has no step counts; these are the usual SD 1.x/SDXL choices
# from quick drafts to careful renders (auto = medium; dall-e's standard/hd = medium/high).
QUALITY_STEPS = {"low": 12, "medium": 25, "high": 40, "xhigh": 50, "max": 60, "auto": 25, "standard": 25, "hd": 40}
# What a response reports (OpenAI's strict clients accept only concrete values there, never "auto").
QUALITY_REPORTED = {"low": "low", "medium": "medium", "high": "high", "xhigh": "xhigh", "max": "max",
                    "auto": "medium", "standard": "medium", "hd": "high"}
NATIVE_SIZE = {"sd1": 512, "sd2": 768, "sdxl": 1024}
EDIT_STRENGTH = 0.8  # img2img without a mask; with a mask the masked part is repainted fully (1.0)
_SIZE = re.compile(r"^\s*([0-9]{1,5})\s*[xX]\s*([0-9]{1,5})\s*$")
# What ``size`` may be, in the schema too (so a client generated from it never sends "" or "big").
SIZE_PATTERN = r"^\s*([Aa][Uu][Tt][Oo]|[0-9]{1,5}\s*[xX]\s*[0-9]{1,5})\s*$"
# Our field names as this door spells them (errors name what the client sent).
OPENAI_NAMES = {"num_inference_steps": "steps", "num_images": "n", "width": "size", "height": "size"}

Quality = Literal["low", "medium", "high", "xhigh", "max", "auto", "standard", "hd"]


class ImagesRequest(BaseModel):
    """The fields of ``images.generate`` / ``images.edit`` that change the job; anything else is ignored."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    prompt: str = Field(min_length=1, max_length=32_000)
    model: str | None = Field(None, max_length=256)
    n: int = Field(1, ge=1, le=10)
    size: str | None = Field(None, max_length=32, pattern=SIZE_PATTERN, description="WxH (multiples of 8) or auto")
    quality: Quality | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    stream: bool = False
    partial_images: int | None = Field(None, ge=0, le=3)
    # sdworker's own (extra_body)
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    steps: int | None = Field(None, ge=1, le=10_000)
    negative_prompt: str = Field("", max_length=20_000)
    guidance_scale: float | None = Field(None, ge=0.0, le=50.0)
    scheduler: str | None = Field(None, min_length=1, max_length=64)
    strength: float | None = Field(None, gt=0.0, le=1.0)

    def answers_with_url(self) -> bool:
        """OpenAI's default when ``response_format`` is left out: ``url`` for ``dall-e-2``/``dall-e-3``
        (LibreChat's DALL-E tool reads only ``url``), ``b64_json`` for the gpt-image models and for a
        request without ``model`` (what gpt-image clients and the README's example read)."""
        if self.response_format is not None:
            return self.response_format == "url"
        return (self.model or "").lower().startswith("dall-e-")


def to_draft(
    body: ImagesRequest,
    settings: Settings,
    *,
    model: str | None,
    entry: ModelInfo | None,
    images: tuple[InputImage, ...] = (),
    mask_image: InputImage | None = None,
) -> JobDraft:
    """``model`` is the served model to run on (None = the default); ``entry`` its library entry where
    known: its native size is ``auto``, its family's steps scale ``quality`` and its size multiple
    rounds ``size`` down; its family's guidance is the default. ``images``: an edit's files; without a
    mask, on an edit model (``domain.edit``) they are the references of an ``image_edit`` job,
    otherwise the first is img2img's init image."""
    init_image = images[0] if images else None
    edits = entry is not None and mask_image is None and edit_model(entry.family, entry.variant) is not None
    steps = body.steps if body.steps is not None else min(quality_steps(body.quality, entry), settings.max_steps)
    native = entry.native_size if entry is not None else NATIVE_SIZE.get("", 512)
    width, height = _size(body.size, native=None if init_image else native)
    multiple = entry.size_multiple if entry is not None else 8
    width = None if width is None else max(multiple, width // multiple * multiple)
    height = None if height is None else max(multiple, height // multiple * multiple)
    operation = Operation.TEXT_TO_IMAGE
    strength = body.strength
    if edits:
        operation, init_image = Operation.EDIT, None
    elif init_image is not None:
        operation = Operation.INPAINT if mask_image is not None else Operation.IMAGE_TO_IMAGE
        strength = strength if strength is not None else (1.0 if mask_image is not None else EDIT_STRENGTH)
    request = GenerationRequest(
        prompt=body.prompt,
        operation=operation,
        negative_prompt=body.negative_prompt,
        num_inference_steps=steps,
        guidance_scale=body.guidance_scale,  # None: the model family's
        seed=body.seed,
        width=width,
        height=height,
        scheduler=body.scheduler,
        num_images=body.n,
        strength=0.8 if strength is None else strength,
        init_image=init_image,
        mask_image=mask_image,
        model=model,
        reference_images=images if edits else (),
    )
    check_job(request, job_limits(settings), OPENAI_NAMES)
    if edits:
        assert entry is not None
        check_edit_model(request, entry.family, entry.variant, entry.name, field=images[0].field)
    return JobDraft(request, preview=preview_options(None, settings))  # decoded only while someone watches


def quality_steps(quality: str | None, entry: ModelInfo | None) -> int:
    """Steps for OpenAI's ``quality``: the table (SD 1.x/SDXL's usual choices) for the UNet families;
    for the others the same ratios of the family's default steps, medium = the default (FLUX.1 schnell:
    low 2, medium 4, high 6; dev: 13 / 28 / 45)."""
    table = QUALITY_STEPS[quality or "auto"]
    if entry is None or entry.family in ("sd1", "sd2", "sdxl"):
        return table
    return max(1, round(entry.default_steps * table / QUALITY_STEPS["medium"]))


def with_partial_images(
    draft: JobDraft, partial_images: int, settings: Settings, fmt: str = "png"
) -> tuple[JobDraft, list[int]]:
    """Previews for a stream: one every ``total // (k + 1)`` steps, full size, in the output format, no
    rate limit; and the steps at which each of the ``k`` partial images is due (evenly spread). No
    previews at all for ``k == 0``."""
    total = draft.request.num_inference_steps or QUALITY_STEPS["auto"]  # the door always sets it
    if draft.request.operation not in (Operation.TEXT_TO_IMAGE, Operation.EDIT):  # an edit runs every step
        total = max(1, int(total * draft.request.strength))
    if partial_images <= 0:  # the stream is a watcher: without this, previews would be decoded for nobody
        return replace(draft, preview=PreviewOptions(every=0)), []
    longest = max(draft.request.width or 512, draft.request.height or 512)
    preview = PreviewOptions(
        every=max(1, total // (partial_images + 1)),
        min_interval_ms=0,
        method=settings.preview_method,
        max_size=min(1024, longest),
        format=fmt,
        quality=settings.preview_quality,
        defaulted=("method", "quality"),  # the door chooses when and how big; the worker how
    )
    targets = [max(1, round(total * (i + 1) / (partial_images + 1))) for i in range(partial_images)]
    return replace(draft, preview=preview), targets


def _size(size: str | None, *, native: int | None) -> tuple[int | None, int | None]:
    if size is None or size.strip().lower() == "auto":
        return native, native
    match = _SIZE.match(size)
    if match is None:
        raise InvalidRequest(f"size: {size!r} is not WxH (e.g. 1024x1024) or auto", field="size")
    width, height = int(match[1]), int(match[2])
    if width < 8 or height < 8 or width % 8 or height % 8:
        raise InvalidRequest(f"size: {size!r}: width and height must be positive multiples of 8", field="size")
    return width, height


def parse_fields(fields: dict[str, str]) -> ImagesRequest:
    """A multipart form's text fields as a request; a bad value names its field (the ``param``)."""
    try:
        return ImagesRequest.model_validate(fields)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first.get("loc", ())) or "body"
        got = f" (got {str(first['input'])[:60]!r})" if first.get("type") != "missing" and "input" in first else ""
        raise InvalidRequest(f"{field}: {first.get('msg', 'invalid value')}{got}", field=field) from None

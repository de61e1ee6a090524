"""Wire schemas of ``POST /v1/jobs`` and their conversion to frozen domain values.

Pydantic lives here only: ``to_draft`` turns a ``JobRequest`` into a ``JobDraft`` (the job's one
``GenerationRequest`` plus preview options and rbee's bookkeeping) before anything is enqueued.
Static bounds are on the fields (strict types, no NaN/Infinity, unknown fields rejected); then the
one check every door's job passes (``domain.checks.check_job``: the server's limits, seed range, text
that is not text) runs in ``to_draft``, naming the field and the allowed range.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from sdworker.domain.checks import MAX_SEED, Limits, check_job
from sdworker.domain.controlnet import MAX_UNITS, check_units
from sdworker.domain.edit import MAX_REFERENCES
from sdworker.domain.hires import DEFAULT_UPSCALER, MAX_SCALE, HiresFix, check_hires, check_upscaler_name
from sdworker.domain.parameters import SD_DEFAULTS
from sdworker.domain.prompt_syntax import normalize_lora_name
from sdworker.domain.request import ControlUnit, GenerationRequest, InputImage, IpAdapterRef, LoraRef, Operation
from sdworker.domain.step_cache import StepCache
from sdworker.errors import InvalidRequest, WrongWorker
from sdworker.jobs.spec import JobDraft, Webhook
from sdworker.previews.options import PREVIEW_FIELDS, PreviewOptions
from sdworker.settings import Settings

_STRICT = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

# The reference design spells operations in PascalCase; rbee sends snake_case. Both mean the same.
OPERATION_NAMES: dict[str, Operation] = {
    "image_generation": Operation.TEXT_TO_IMAGE,
    "image_transform": Operation.IMAGE_TO_IMAGE,
    "image_inpaint": Operation.INPAINT,
    "ImageGeneration": Operation.TEXT_TO_IMAGE,
    "ImageTransform": Operation.IMAGE_TO_IMAGE,
    "ImageInpaint": Operation.INPAINT,
    "image_edit": Operation.EDIT,
    "ImageEdit": Operation.EDIT,
    "image_upscale": Operation.UPSCALE,
}
OperationName = Literal[
    "image_generation", "image_transform", "image_inpaint", "image_edit", "ImageGeneration", "ImageTransform",
    "ImageInpaint", "ImageEdit", "image_upscale",
]
_TEXT = 20_000  # characters; CLIP reads 77 tokens, this only stops absurd bodies early
_NAME = 256
_MAX_LORAS = 16
MAX_DEADLINE_SECONDS = 86400.0
MAX_IP_IMAGES = 4
# Our field names as the native wire spells them (errors name what the client sent).
NATIVE_NAMES = {"num_inference_steps": "steps", "num_images": "n"}


def job_limits(settings: Settings) -> Limits:
    return Limits(max_steps=settings.max_steps, max_images=settings.max_images, max_pixels=settings.max_pixels)


class PreviewRequest(BaseModel):
    """Per-job preview options; each one left out takes the server's default (settings)."""

    model_config = _STRICT

    every: int | None = Field(None, ge=0, le=10_000, description="a preview every N steps; 0 = off")
    min_interval_ms: int | None = Field(None, ge=0, le=600_000, description="at most one preview per interval")
    method: Literal["auto", "latent2rgb", "taesd", "vae", "none"] | None = None
    max_size: int | None = Field(None, ge=16, le=1024, description="longest side of a preview in px")
    format: Literal["jpeg", "webp", "png"] | None = None
    quality: int | None = Field(None, ge=1, le=100, description="JPEG/WebP quality")


class LoraRequest(BaseModel):
    """One LoRA of a job (rbee's shape): its name in the LoRA folder and its weight."""

    model_config = _STRICT

    path: str = Field(min_length=1, max_length=_NAME, description="a name of GET /v1/loras")
    strength: float = Field(1.0, ge=-10.0, le=10.0, description="1.0 = as trained; negative inverts it")


class HiresRequest(BaseModel):
    """The hires fix (A1111's ``enable_hr``): after the job's pass, an upscale and a second
    image-to-image pass at the larger size. Text-to-image jobs on SD 1.x/2.x/SDXL models."""

    model_config = _STRICT

    scale: float = Field(2.0, ge=1.0, le=MAX_SCALE, description="second pass size = scale x width/height")
    resize_width: int | None = Field(None, ge=8, le=16_384, description="instead of scale (A1111's hr_resize_x)")
    resize_height: int | None = Field(None, ge=8, le=16_384, description="instead of scale (A1111's hr_resize_y)")
    upscaler: str = Field(DEFAULT_UPSCALER, min_length=1, max_length=64,
                          description="a latent mode of GET /sdapi/v1/latent-upscale-modes, or None/Lanczos/Nearest")
    steps: int | None = Field(None, ge=1, le=10_000, description="second pass steps (default: the job's)")
    strength: float = Field(0.7, gt=0.0, le=1.0, description="second pass denoising strength")
    prompt: str | None = Field(None, max_length=_TEXT, description="second pass prompt (default: the job's)")
    negative_prompt: str | None = Field(None, max_length=_TEXT, description="second pass negative prompt")

    def to_domain(self) -> HiresFix:
        return HiresFix(scale=self.scale, resize_width=self.resize_width, resize_height=self.resize_height,
                        upscaler=self.upscaler, steps=self.steps, strength=self.strength, prompt=self.prompt,
                        negative_prompt=self.negative_prompt)


class CacheRequest(BaseModel):
    """Step caching for this job (off unless asked): faster, and the image differs from the uncached one."""

    model_config = _STRICT

    kind: Literal["first_block", "taylorseer", "mag"] = Field(
        description="first_block (FLUX.1), taylorseer (FLUX.1, SD 3.5), mag (FLUX.1)"
    )
    threshold: float | None = Field(
        None, gt=0.0, le=1.0, description="first_block (default 0.08) and mag (0.06): higher skips more"
    )

    def to_domain(self) -> StepCache:
        return StepCache(kind=self.kind, threshold=self.threshold)


class ControlUnitRequest(BaseModel):
    """One ControlNet unit: a model of GET /v1/controlnets, its control image and how strongly and when
    it steers."""

    model_config = _STRICT

    model: str = Field(min_length=1, max_length=_NAME, description="a ControlNet of the --controlnet-dir folder")
    image: str = Field(min_length=1, description="base64 control image (or a photo, with a preprocessor)")
    weight: float = Field(1.0, ge=0.0, le=2.0, description="controlnet_conditioning_scale")
    start: float = Field(0.0, ge=0.0, le=1.0, description="fraction of the steps where it starts acting")
    end: float = Field(1.0, ge=0.0, le=1.0, description="fraction of the steps where it stops")
    preprocessor: str = Field("none", min_length=1, max_length=64, description="none | canny | invert | threshold")
    low: float = Field(100.0, ge=0.0, le=255.0, description="canny's low threshold; threshold's level")
    high: float = Field(200.0, ge=0.0, le=255.0, description="canny's high threshold")
    control_mode: int | None = Field(None, ge=0, le=63, description="a union ControlNet's mode for this unit's map "
                                     "(diffusers' control_mode); only for union ControlNets")


WebhookEvent = Literal["start", "progress", "completed"]


class WebhookRequest(BaseModel):
    """Where the job's signed webhooks go (Standard Webhooks; docs/webhooks.md)."""

    model_config = _STRICT

    url: str = Field(min_length=1, max_length=2048, description="http(s) URL; its host must resolve to public IPs")
    events: list[WebhookEvent] = Field(
        default_factory=lambda: list[WebhookEvent](["completed"]), min_length=1, max_length=3,
        description="which moments to report: start, progress (at most one a second), completed (every end)",
    )


class IpAdapterRequest(BaseModel):
    """An IP-Adapter: an adapter of the --ip-adapter-dir folder, its reference images and its scale."""

    model_config = _STRICT

    model: str = Field(min_length=1, max_length=_NAME, description="an IP-Adapter of the --ip-adapter-dir folder")
    images: list[str] = Field(min_length=1, max_length=MAX_IP_IMAGES, description="base64 reference images")
    scale: float = Field(1.0, ge=0.0, le=2.0, description="how strongly the images steer; 0 = as without it")


class JobRequest(BaseModel):
    """The body of ``POST /v1/jobs`` (rbee's fields; diffusers' names where rbee has none)."""

    model_config = _STRICT

    operation: OperationName = "image_generation"
    prompt: str = Field(min_length=1, max_length=_TEXT)
    negative_prompt: str = Field("", max_length=_TEXT)
    steps: int | None = Field(
        None, ge=1, le=10_000,
        description="denoising steps (the server caps with --max-steps); default: the model family's "
        "(SD 20, FLUX.1 dev 28, schnell 4, SD 3.5 28-40, Z-Image-Turbo 8, Qwen-Image 50)",
    )
    guidance_scale: float | None = Field(
        None, ge=0.0, le=50.0,
        description="default: the model family's. CFG for SD 1/2/XL, SD 3.5 and Z-Image; FLUX.1's distilled "
        "guidance (one pass, negative_prompt and clip_skip ignored and listed in the job's warnings); "
        "Qwen-Image's true CFG",
    )
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="0..2^64-1; image i uses seed + i")
    width: int | None = Field(
        None, ge=8, le=16_384, multiple_of=8, description="default: the model's native size, or the image's"
    )
    height: int | None = Field(None, ge=8, le=16_384, multiple_of=8, description="as width")
    scheduler: str | None = Field(None, min_length=1, max_length=64)
    n: int = Field(1, ge=1, le=64, description="number of images (the server caps with --max-images)")
    input_image: str | None = Field(None, min_length=1, description="img2img: base64 image (or init_image)")
    init_image: str | None = Field(None, min_length=1, description="img2img/inpaint: base64 image")
    mask_image: str | None = Field(None, min_length=1, description="inpaint: base64 mask, white = repaint")
    strength: float | None = Field(None, gt=0.0, le=1.0, description="img2img/inpaint strength (0.8)")
    preview: PreviewRequest | None = None
    # rbee's bookkeeping: accepted, shown in the job's parameters. `model` picks the model (one of
    # those served); `worker_id` must name this worker when it was started with --worker-id.
    hive_id: str | None = Field(None, max_length=_NAME)
    worker_id: str | None = Field(None, max_length=_NAME)
    model: str | None = Field(None, max_length=_NAME, description="a model of GET /v1/models; default: the default")
    loras: list[LoraRequest] | None = Field(
        None, max_length=_MAX_LORAS, description="LoRAs of GET /v1/loras with their weights (also <lora:name:w>)"
    )
    clip_skip: int | None = Field(None, ge=1, le=12, description="A1111's: 1 = last CLIP layer, 2 = penultimate")
    hires: HiresRequest | None = Field(None, description="image_generation: a second pass at a larger size")
    controlnet: list[ControlUnitRequest] | None = Field(None, max_length=MAX_UNITS, description="ControlNet units")
    webhook: WebhookRequest | None = Field(None, description="signed POSTs when the job starts, progresses, ends")
    deadline_seconds: float | None = Field(
        None, gt=0, le=MAX_DEADLINE_SECONDS,
        description="after submit; a job not finished by then ends cancelled, code deadline_exceeded",
    )
    priority: int = Field(0, ge=0, le=100, description="higher starts first; at most the API key's own priority")
    cache: CacheRequest | None = Field(None, description="opt-in step caching (transformer families)")
    ip_adapter: IpAdapterRequest | None = Field(None, description="SD 1.x/2.x/SDXL, FLUX.1: reference images")
    upscaler: str | None = Field(
        None, min_length=1, max_length=_NAME,
        description="image_upscale: an upscaler model of --upscalers-dir (GET /sdapi/v1/upscalers) or None/Lanczos/"
        "Nearest; width/height are the output size (default: the image's)",
    )
    reference_images: list[str] | None = Field(
        None, min_length=1, max_length=MAX_REFERENCES,
        description="image_edit: base64 images the prompt edits, on an edit model (FLUX.1 Kontext: 1, "
        "Qwen-Image-Edit: 1, Qwen-Image-Edit-Plus: up to 3)",
    )


def to_draft(body: JobRequest, settings: Settings, *, cancel_after: float | None = None,
             upscalers: tuple[str, ...] | None = None) -> JobDraft:
    """``cancel_after``: the ``Cancel-After`` header's seconds; the earlier of it and ``deadline_seconds``.
    ``upscalers``: the upscaler models a hires fix may name (None: not known here; the engine checks)."""
    operation = OPERATION_NAMES[body.operation]
    _check_worker(body.worker_id, settings.worker_id)
    width, height = body.width, body.height
    if operation in (Operation.TEXT_TO_IMAGE, Operation.EDIT):
        _refuse_images(body, ("input_image", "init_image", "mask_image"), body.operation)
    hires = _hires(body, operation, settings, upscalers)
    init_field, init_image = _init_image(body, operation)
    if operation is Operation.IMAGE_TO_IMAGE:
        _refuse_images(body, ("mask_image",), "image_transform (use image_inpaint)")
    if (operation is Operation.UPSCALE) != (body.upscaler is not None):
        raise InvalidRequest("upscaler: required for image_upscale, and only for it", field="upscaler")
    if operation is Operation.UPSCALE:
        _refuse_images(body, ("mask_image",), "image_upscale")
    if operation is Operation.INPAINT and body.mask_image is None:
        raise InvalidRequest(
            "mask_image: required for image_inpaint (base64 image, white = repaint)", field="mask_image"
        )
    request = GenerationRequest(
        prompt=body.prompt,
        operation=operation,
        negative_prompt=body.negative_prompt,
        num_inference_steps=body.steps,
        guidance_scale=body.guidance_scale,
        seed=body.seed,
        width=width,
        height=height,
        scheduler=body.scheduler,
        num_images=body.n,
        strength=0.8 if body.strength is None else body.strength,
        init_image=InputImage(init_image, init_field) if init_image is not None else None,
        mask_image=InputImage(body.mask_image, "mask_image") if body.mask_image is not None else None,
        model=body.model,
        loras=_loras(body.loras),
        clip_skip=body.clip_skip,
        hires=hires,
        controlnet=_units(body.controlnet),
        cache=body.cache.to_domain() if body.cache is not None else None,
        reference_images=tuple(
            InputImage(image, f"reference_images.{i}") for i, image in enumerate(body.reference_images or ())
        ),
        ip_adapter=_ip_adapter(body.ip_adapter),
        upscaler=body.upscaler,
    )
    check_job(request, job_limits(settings), NATIVE_NAMES)
    deadlines = [d for d in (body.deadline_seconds, cancel_after) if d is not None]
    webhook = body.webhook
    return JobDraft(
        request, preview=preview_options(body.preview, settings), hive_id=body.hive_id, worker_id=body.worker_id,
        webhook=Webhook(webhook.url, tuple(dict.fromkeys(webhook.events))) if webhook is not None else None,
        deadline_seconds=min(deadlines) if deadlines else None,
        priority=body.priority,
    )


_DURATION = re.compile(r"([0-9]{1,6}(?:\.[0-9]{1,3})?)(ms|s|m|h)?", re.ASCII)
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def cancel_after_seconds(value: str | None) -> float | None:
    """Replicate's ``Cancel-After`` header: a duration such as ``30s``, ``5m``, ``1h``, ``1500ms`` or
    plain seconds, in 0 < d <= one day."""
    if value is None:
        return None
    match = _DURATION.fullmatch(value.strip())
    seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)] if match else 0.0
    if not 0 < seconds <= MAX_DEADLINE_SECONDS:
        raise InvalidRequest(
            f"Cancel-After: expected a duration in 0 < d <= 24h such as 30s, 5m or 1h, got {value[:40]!r}",
            field="Cancel-After",
        )
    return seconds


def _hires(
    body: JobRequest, operation: Operation, settings: Settings, upscalers: tuple[str, ...] | None
) -> HiresFix | None:
    """The hires fix's rules that need no model (its size when the job's size is given; the engine
    checks the rest at submit, with the model's native size)."""
    if body.hires is None:
        return None
    if operation is not Operation.TEXT_TO_IMAGE:
        raise InvalidRequest(f"hires: only for image_generation, not {body.operation}", field="hires")
    hires = body.hires.to_domain()
    steps = body.steps or SD_DEFAULTS[0]  # hires runs on the UNet families (SD 1/2/XL: 20 steps)
    if not 1 <= (hires.steps or steps) <= settings.max_steps:
        raise InvalidRequest(
            f"hires.steps: {hires.steps or steps} is out of range; allowed 1..{settings.max_steps}", field="hires.steps"
        )
    if body.width is not None and body.height is not None:
        check_hires(hires, body.width, body.height, steps, max_pixels=settings.max_pixels, upscaler_models=upscalers)
    else:  # the size is settled later (the model's native size); the name can be checked now
        check_upscaler_name(hires, upscalers)
    return hires


def _units(units: list[ControlUnitRequest] | None) -> tuple[ControlUnit, ...]:
    made = tuple(
        ControlUnit(u.model, InputImage(u.image, f"controlnet.{i}.image"), u.weight, u.start, u.end, u.preprocessor,
                    u.low, u.high, u.control_mode)
        for i, u in enumerate(units or ())
    )
    check_units(made)
    return made


def _ip_adapter(body: IpAdapterRequest | None) -> IpAdapterRef | None:
    if body is None:
        return None
    images = tuple(InputImage(image, f"ip_adapter.images.{i}") for i, image in enumerate(body.images))
    return IpAdapterRef(body.model, images, body.scale)


def _loras(loras: list[LoraRequest] | None) -> tuple[LoraRef, ...]:
    names = [normalize_lora_name(lora.path) for lora in loras or ()]
    for name in names:
        if names.count(name) > 1:
            raise InvalidRequest(f"loras: {name!r} is listed twice; give each LoRA once", field="loras")
    return tuple(LoraRef(lora.path, lora.strength) for lora in loras or ())


def preview_options(preview: PreviewRequest | None, settings: Settings) -> PreviewOptions:
    p = preview or PreviewRequest.model_validate({})
    return PreviewOptions(
        every=settings.preview_every if p.every is None else p.every,
        min_interval_ms=settings.preview_min_interval_ms if p.min_interval_ms is None else p.min_interval_ms,
        method=p.method or settings.preview_method,
        max_size=settings.preview_max_size if p.max_size is None else p.max_size,
        format=p.format or settings.preview_format,
        quality=settings.preview_quality if p.quality is None else p.quality,
        defaulted=tuple(name for name in PREVIEW_FIELDS if getattr(p, name) is None),
    )


def _init_image(body: JobRequest, operation: Operation) -> tuple[str, str | None]:
    if operation in (Operation.TEXT_TO_IMAGE, Operation.EDIT):
        return "init_image", None
    if body.input_image is not None and body.init_image is not None:
        raise InvalidRequest("input_image: give input_image or init_image, not both", field="input_image")
    if body.input_image is not None:
        return "input_image", body.input_image
    if body.init_image is not None:
        return "init_image", body.init_image
    field = "input_image" if operation is Operation.IMAGE_TO_IMAGE else "init_image"
    raise InvalidRequest(f"{field}: required for {operation.value} (a base64 image)", field=field)


def _refuse_images(body: JobRequest, fields: tuple[str, ...], operation: str) -> None:
    for name in fields:
        if getattr(body, name) is not None:
            raise InvalidRequest(f"{name}: not used by {operation}", field=name)


def _check_worker(requested: str | None, ours: str | None) -> None:
    """rbee's queen names the worker it scheduled a job on: a job for another one was misrouted and is
    refused rather than run here. A node without ``--worker-id`` (an API node of a fleet) ignores it."""
    if ours is not None and requested is not None and requested != ours:
        raise WrongWorker(
            f"worker_id: this is worker {ours!r}; the job is for worker {requested!r} (misrouted)",
            field="worker_id",
        )


"""A1111 ``/sdapi/v1/txt2img`` and ``img2img`` requests, with A1111's names and defaults, and their
translation to a ``JobDraft``.

Unknown fields are ignored, as A1111 does (clients send dozens; SillyTavern forwards its own). Fields
we cannot honour that would change the image (``alwayson_scripts``, ``restore_faces``, the hires
fix's own sampler or checkpoint, ...) are collected by ``ignored`` and named in the answer's ``info``.
Width and height are rounded down to multiples of 8 (the latent grid), as A1111's own processing does.
``enable_hr`` with its ``hr_*`` fields becomes the job's hires fix (``domain.hires``).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sdworker.api.compat.a1111_samplers import SamplerChoice
from sdworker.api.schemas import preview_options
from sdworker.domain.hires import DEFAULT_UPSCALER, HiresFix, check_hires
from sdworker.domain.request import ControlUnit, GenerationRequest, InputImage, Operation
from sdworker.errors import InvalidRequest
from sdworker.jobs.spec import JobDraft
from sdworker.settings import Settings

_HONOURED_OVERRIDES = {"sd_model_checkpoint", "CLIP_stop_at_last_layers", "sd_vae", "samples_format"}


class Txt2ImgRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int = -1
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = "Euler"
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=64)
    steps: int = Field(50, ge=1, le=10_000)
    cfg_scale: float = Field(7.0, ge=0.0, le=50.0)
    width: int = Field(512, ge=8, le=16_384)
    height: int = Field(512, ge=8, le=16_384)
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    enable_hr: bool = False
    hr_scale: float = 2.0
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = Field(0, ge=0, le=10_000)
    hr_resize_x: int = Field(0, ge=0, le=16_384)
    hr_resize_y: int = Field(0, ge=0, le=16_384)
    hr_prompt: str | None = ""
    hr_negative_prompt: str | None = ""
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    firstphase_width: int = 0
    firstphase_height: int = 0
    script_name: str | None = None
    script_args: list[Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] | None = None
    resize_mode: int = Field(0, ge=0, le=3)
    denoising_strength: float | None = Field(0.75, ge=0.0, le=1.0)
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur: int | None = Field(None, ge=0, le=256)
    inpainting_fill: int = Field(0, ge=0, le=3)
    inpaint_full_res: bool = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    initial_noise_multiplier: float | None = None
    include_init_images: bool = False


def ignored(body: Txt2ImgRequest) -> dict[str, str]:
    """Fields set to something that would change the image, which this worker does not do."""
    notes: dict[str, str] = {}
    hires = body.enable_hr and not isinstance(body, Img2ImgRequest)
    checks: list[tuple[str, bool]] = [

        # the hires fix runs with the first pass's model and sampler
        ("hr_checkpoint_name", hires and body.hr_checkpoint_name not in (None, "", "Use same checkpoint")),
        ("hr_sampler_name", hires and body.hr_sampler_name not in (None, "", "Use same sampler")),
        ("hr_scheduler", hires and body.hr_scheduler not in (None, "", "Use same scheduler")),
        ("restore_faces", bool(body.restore_faces)),
        ("tiling", bool(body.tiling)),
        ("script_name", bool(body.script_name)),
        ("styles", bool(body.styles)),
        ("subseed_strength", body.subseed_strength > 0),
        ("seed_resize_from_w", body.seed_resize_from_w > 0 or body.seed_resize_from_h > 0),
        ("refiner_checkpoint", bool(body.refiner_checkpoint)),
        ("infotext", bool(body.infotext)),
    ]
    if isinstance(body, Img2ImgRequest) and body.mask:
        checks += [
            ("inpainting_fill", body.inpainting_fill != 1),  # ours starts from the original image, noised
            ("inpaint_full_res", body.inpaint_full_res),  # ours repaints at the whole picture's resolution
        ]
    if isinstance(body, Img2ImgRequest):
        checks += [
            ("resize_mode", body.resize_mode == 3),
            ("init_images", len(body.init_images or ()) > 1),
            ("initial_noise_multiplier", body.initial_noise_multiplier not in (None, 1, 1.0)),
        ]
    for name, is_set in checks:
        if is_set:
            notes[name] = "not supported by sdworker; ignored"
    for script, value in body.alwayson_scripts.items():  # ControlNet is honoured (a1111_controlnet)
        if script.lower() != "controlnet" and value:
            notes[f"alwayson_scripts.{script}"] = "not supported by sdworker; ignored"
    for key in sorted(set(body.override_settings or {}) - _HONOURED_OVERRIDES):
        notes[f"override_settings.{key}"] = "not supported by sdworker; ignored"
    return notes


def to_draft(
    body: Txt2ImgRequest,
    settings: Settings,
    *,
    sampler: SamplerChoice,
    model: str | None,
    init_image: InputImage | None = None,
    mask_image: InputImage | None = None,
    controlnet: tuple[ControlUnit, ...] = (),
) -> JobDraft:
    """``init_image``/``mask_image``: prepared for img2img (fitted, mask white = repaint)."""
    count = body.batch_size * body.n_iter
    if count > settings.max_images:
        raise InvalidRequest(
            f"batch_size x n_iter: {body.batch_size} x {body.n_iter} = {count} images; "
            f"this server's limit is {settings.max_images}",
            field="batch_size",
        )
    if body.steps > settings.max_steps:
        raise InvalidRequest(f"steps: {body.steps} is above this server's limit of {settings.max_steps}", field="steps")
    operation = Operation.TEXT_TO_IMAGE
    strength = 0.75
    if init_image is not None:
        operation = Operation.INPAINT if mask_image is not None else Operation.IMAGE_TO_IMAGE
        strength = body.denoising_strength if body.denoising_strength is not None else 0.75
        if strength <= 0:
            raise InvalidRequest("denoising_strength: must be above 0", field="denoising_strength")
    clip_skip = (body.override_settings or {}).get("CLIP_stop_at_last_layers")
    width, height = max(8, body.width // 8 * 8), max(8, body.height // 8 * 8)
    hires = _hires(body, settings, width, height) if init_image is None else None
    request = GenerationRequest(
        prompt=body.prompt or "",
        operation=operation,
        negative_prompt=body.negative_prompt or "",
        num_inference_steps=body.steps,
        guidance_scale=body.cfg_scale,
        seed=body.seed if body.seed >= 0 else None,
        width=width,
        height=height,
        scheduler=sampler.scheduler,
        num_images=count,
        strength=strength,
        init_image=init_image,
        mask_image=mask_image,
        model=model,
        clip_skip=int(clip_skip) if isinstance(clip_skip, int | float) and clip_skip > 1 else None,
        hires=hires,
        controlnet=controlnet,
    )
    return JobDraft(request, preview=preview_options(None, settings))


def _hires(body: Txt2ImgRequest, settings: Settings, width: int, height: int) -> HiresFix | None:
    """A1111's ``enable_hr`` fields as the job's hires fix: 0 and "" mean "unset" (the first pass's
    steps, prompts; scale instead of a resize); no ``hr_upscaler`` is A1111's default latent mode."""
    if not body.enable_hr:
        return None
    hires = HiresFix(
        scale=body.hr_scale,
        resize_width=body.hr_resize_x or None,
        resize_height=body.hr_resize_y or None,
        upscaler=body.hr_upscaler or DEFAULT_UPSCALER,
        steps=body.hr_second_pass_steps or None,
        strength=0.75 if body.denoising_strength is None else body.denoising_strength,
        prompt=body.hr_prompt or None,
        negative_prompt=body.hr_negative_prompt or None,
    )
    if (hires.steps or body.steps) > settings.max_steps:
        raise InvalidRequest(f"hr_second_pass_steps: {hires.steps} is above this server's limit of "
                             f"{settings.max_steps}", field="hr_second_pass_steps")
    check_hires(hires, width, height, body.steps, max_pixels=settings.max_pixels, prefix="hr_")
    return hires


def echoed(body: Txt2ImgRequest) -> dict[str, Any]:
    """The request as A1111 echoes it in ``parameters``: every field with defaults filled, images left
    out unless ``include_init_images``."""
    data = body.model_dump()
    if isinstance(body, Img2ImgRequest) and not body.include_init_images:
        data["init_images"] = None
        data["mask"] = None
    return data

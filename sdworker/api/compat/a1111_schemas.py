"""A1111 ``/sdapi/v1/txt2img`` and ``img2img`` requests, with A1111's names and defaults, and their
translation to a ``JobDraft``.

Unknown fields are ignored, as A1111 does (clients send dozens; SillyTavern forwards its own). Fields
we cannot honour that would change the image (``alwayson_scripts``, ``restore_faces``, the hires
fix's own sampler or checkpoint, ...) are collected by ``ignored`` and named in the answer's ``info``.
Width and height are rounded down to multiples of 8 (the latent grid), as A1111's own processing does.
``enable_hr`` with its ``hr_*`` fields becomes the job's hires fix (``domain.hires``).
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from sdworker.api.compat.a1111_samplers import SamplerChoice
from sdworker.api.schemas import job_limits, preview_options
from sdworker.domain.checks import MAX_SEED, check_job, text_problem
from sdworker.domain.families import FamilyFacts, family_facts
from sdworker.domain.hires import DEFAULT_UPSCALER, HiresFix, check_hires
from sdworker.domain.parameters import SD_DEFAULTS
from sdworker.domain.request import ControlUnit, GenerationRequest, InputImage, Operation
from sdworker.errors import InvalidRequest
from sdworker.jobs.spec import JobDraft
from sdworker.settings import Settings

_HONOURED_OVERRIDES = {"sd_model_checkpoint", "CLIP_stop_at_last_layers", "sd_vae", "samples_format"}
CLIP_SKIP_FIELD = "override_settings.CLIP_stop_at_last_layers"
# Our field names as A1111 spells them (errors name what the client sent).
A1111_NAMES = {
    "num_inference_steps": "steps", "num_images": "batch_size", "guidance_scale": "cfg_scale",
    "strength": "denoising_strength", "scheduler": "sampler_name", "clip_skip": CLIP_SKIP_FIELD,
    "model": "override_settings.sd_model_checkpoint",
}


class Txt2ImgRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    prompt: str | None = ""
    negative_prompt: str | None = ""
    styles: list[str] | None = None
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 = random; image i uses seed + i")
    subseed: int = -1
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = "Euler"
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1, le=64)
    n_iter: int = Field(1, ge=1, le=64)
    steps: int | None = Field(None, ge=1, le=10_000)  # None: the model family's default
    cfg_scale: float | None = Field(None, ge=0.0, le=50.0)  # CFG; None: the family's default
    distilled_cfg_scale: float | None = Field(None, ge=0.0, le=50.0)  # Forge's: FLUX.1's distilled guidance
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
    guidance: float | None = None,
    multiple: int = 8,
    controlnet: tuple[ControlUnit, ...] = (),
    upscalers: tuple[str, ...] | None = None,
) -> JobDraft:
    """``init_image``/``mask_image``: the client's images as given (base64 text, unchecked): the job's
    bounds (sizes, steps, images, seed, text) are checked here first, and only then may the door decode
    and fit them (``with_images``). The image count is ``batch_size x n_iter``. ``guidance``: what the
    model's family reads as guidance (``family_guidance``); ``multiple``: its size multiple, width and
    height round down to it."""
    operation = Operation.TEXT_TO_IMAGE
    strength = 0.75
    if init_image is not None:
        operation = Operation.INPAINT if mask_image is not None else Operation.IMAGE_TO_IMAGE
        strength = body.denoising_strength if body.denoising_strength is not None else 0.75
    width = max(multiple, body.width // multiple * multiple)
    height = max(multiple, body.height // multiple * multiple)
    hires = _hires(body, settings, width, height, upscalers) if init_image is None else None
    request = GenerationRequest(
        prompt=body.prompt or "",
        operation=operation,
        negative_prompt=body.negative_prompt or "",
        num_inference_steps=body.steps,
        guidance_scale=guidance,
        seed=None if body.seed == -1 else body.seed,
        width=width,
        height=height,
        scheduler=sampler.scheduler,
        num_images=body.batch_size * body.n_iter,
        strength=strength,
        init_image=init_image,
        mask_image=mask_image,
        model=model,
        clip_skip=_clip_skip((body.override_settings or {}).get("CLIP_stop_at_last_layers")),
        hires=hires,
        controlnet=controlnet,
    )
    check_job(request, job_limits(settings), A1111_NAMES)
    return JobDraft(request, preview=preview_options(None, settings))


def _clip_skip(value: Any) -> int | None:
    """A1111's ``CLIP_stop_at_last_layers``: a whole number (1 = the last layer, no skip); anything
    else (text, 1e400, 2.5) is the client's error, named."""
    if value is None:
        return None
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if not (number and math.isfinite(value) and value == int(value)):
        raise InvalidRequest(f"{CLIP_SKIP_FIELD}: expected a whole number 1..12, got {str(value)[:40]!r}",
                             field=CLIP_SKIP_FIELD)
    return None if int(value) == 1 else int(value)


def check_texts(value: Any, path: str = "") -> None:
    """Every string of a compat body, wherever it sits (``styles``, ``override_settings``, script args):
    a lone surrogate or NUL would fail later, deep in the job or in the answer's JSON. Names the field."""
    if isinstance(value, str):
        problem = text_problem(value)
        if problem:
            raise InvalidRequest(f"{path or 'body'}: {problem}", field=path or "body")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_texts(str(key), path)  # a bad key is named by its parent
            check_texts(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            check_texts(item, f"{path}.{index}" if path else str(index))


def family_guidance(body: Txt2ImgRequest, family: str | None) -> tuple[float | None, dict[str, str]]:
    """The guidance a job gets and what the family ignores of the request, as Forge reads them: FLUX.1's
    distilled guidance is ``distilled_cfg_scale`` (its ``cfg_scale`` would be a second, true-CFG pass,
    which sdworker does not run); every other family's guidance is ``cfg_scale``."""
    notes: dict[str, str] = {}
    facts = _facts(family)
    if facts is not None and facts.guidance == "distilled":
        if body.cfg_scale not in (None, 1.0):
            notes["cfg_scale"] = (f"{facts.label} has no CFG pass here; its guidance is distilled_cfg_scale "
                                  f"({body.cfg_scale} ignored)")
        if body.negative_prompt:
            notes["negative_prompt"] = f"{facts.label} has no CFG pass; the negative prompt is ignored"
        return body.distilled_cfg_scale, notes
    if body.distilled_cfg_scale is not None:
        label = facts.label if facts is not None else "this model"
        notes["distilled_cfg_scale"] = f"{label} takes CFG (cfg_scale), not distilled guidance; ignored"
    return body.cfg_scale, notes


def family_sampler(choice: SamplerChoice, body: Txt2ImgRequest, family: str | None) -> SamplerChoice:
    """A family with its own sampler (the flow-matching ones) runs it, listing another request's in
    ``info.ignored``; the UNet families keep the A1111 mapping."""
    facts = _facts(family)
    if facts is None or facts.schedulers is None:
        return choice
    asked = body.sampler_name or body.sampler_index
    notes = {}
    if asked and asked.strip().lower() not in ("euler", "flow match euler"):
        notes["sampler_name"] = f"{facts.label} samples with flow-matching Euler; {asked!r} was not used"
    return SamplerChoice(None, "Euler", "Automatic", notes)


def _facts(family: str | None) -> FamilyFacts | None:
    if family is None:
        return None
    try:
        return family_facts(family)
    except KeyError:
        return None


def _hires(
    body: Txt2ImgRequest, settings: Settings, width: int, height: int, upscalers: tuple[str, ...] | None
) -> HiresFix | None:
    """A1111's ``enable_hr`` fields as the job's hires fix: 0 and "" mean "unset" (the first pass's
    steps, prompts; scale instead of a resize); no ``hr_upscaler`` is A1111's default latent mode.
    ``upscalers``: the worker's upscaler models (None: not known here, the worker checks the name)."""
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
    steps = body.steps or SD_DEFAULTS[0]  # hires runs on the UNet families (SD 1/2/XL: 20 steps)
    if (hires.steps or steps) > settings.max_steps:
        raise InvalidRequest(f"hr_second_pass_steps: {hires.steps} is above this server's limit of "
                             f"{settings.max_steps}", field="hr_second_pass_steps")
    check_hires(hires, width, height, steps, max_pixels=settings.max_pixels, prefix="hr_", upscaler_models=upscalers)
    return hires


def echoed(body: Txt2ImgRequest) -> dict[str, Any]:
    """The request as A1111 echoes it in ``parameters``: every field with defaults filled, images left
    out unless ``include_init_images``."""
    data = body.model_dump()
    if isinstance(body, Img2ImgRequest) and not body.include_init_images:
        data["init_images"] = None
        data["mask"] = None
    return data

"""Checks of a generation's parameters shared by every door: the API's submit (``jobs/inputs.py``,
both backends, the OpenAI and A1111 doors too), ``sdworker generate`` (``cli/generate.py``) and the
engine itself (``diffusers_engine.validate_request``). One function per rule, so a bad request is
refused the same way, with the same message, wherever it comes in; each caller names its own fields
(``strength`` on the wire, ``--strength`` on the command line)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from PIL import Image

from sdworker.domain.edit import check_edit_fields
from sdworker.domain.request import GenerationRequest, Operation
from sdworker.domain.step_cache import check_cache
from sdworker.errors import InvalidRequest
from sdworker.imaging.decode import check_mask_matches

MAX_CLIP_SKIP = 12
MAX_LORA_WEIGHT = 10.0
MAX_SEED = 2**64 - 1  # rbee sends a u64; torch's ``manual_seed`` takes 0..2^64-1
MAX_PROMPT_CHARS = 20_000  # CLIP reads 77 tokens; this only stops absurd bodies early
MAX_NAME_CHARS = 256
MAX_SIDE = 16_384
MAX_GUIDANCE = 50.0


@dataclass(frozen=True, slots=True)
class Limits:
    """A server's limits on what one job may ask (``--max-steps``, ``--max-images``, ``--max-pixels``)."""

    max_steps: int
    max_images: int
    max_pixels: int


def check_job(request: GenerationRequest, limits: Limits, names: Mapping[str, str] | None = None) -> None:
    """The one set of bounds every door's job passes before it is queued or its images decoded.

    Each door translates its own syntax (A1111's ``seed: -1``, OpenAI's ``size``) into a
    ``GenerationRequest`` and calls this, so no door lets through more than the native one.
    ``names`` maps our field names to the door's wire names (``num_images`` -> ``batch_size``), so the
    error names the field the client sent. Images are checked later, once sizes are known to be sane.
    """
    wire = dict(names or {})

    def name(field: str) -> str:
        return wire.get(field, field)

    def refuse(field: str, problem: str) -> InvalidRequest:
        return InvalidRequest(f"{name(field)}: {problem}", field=name(field))

    texts = [("prompt", request.prompt, MAX_PROMPT_CHARS), ("negative_prompt", request.negative_prompt,
             MAX_PROMPT_CHARS), ("scheduler", request.scheduler, MAX_NAME_CHARS), ("model", request.model,
             MAX_NAME_CHARS)]
    texts += [("loras", ref.name, MAX_NAME_CHARS) for ref in request.loras]
    for field, text, longest in texts:
        if text is None:
            continue
        if len(text) > longest:
            raise refuse(field, f"{len(text)} characters; the limit is {longest}")
        problem = text_problem(text)
        if problem:
            raise refuse(field, problem)
    for field, side in (("width", request.width), ("height", request.height)):
        if side is not None and not (8 <= side <= MAX_SIDE and side % 8 == 0):
            raise refuse(field, f"{side} is not a multiple of 8 in 8..{MAX_SIDE}")
    if request.width is not None and request.height is not None and request.width * request.height > limits.max_pixels:
        pixels = request.width * request.height
        raise refuse("width", f"{request.width}x{request.height} = {pixels} pixels; the limit is {limits.max_pixels}")
    if request.num_inference_steps is not None and not 1 <= request.num_inference_steps <= limits.max_steps:
        steps = request.num_inference_steps
        raise refuse("num_inference_steps", f"{steps} is out of range; allowed 1..{limits.max_steps}")
    if not 1 <= request.num_images <= limits.max_images:
        raise refuse("num_images", f"{request.num_images} is out of range; allowed 1..{limits.max_images}")
    if request.seed is not None and not 0 <= request.seed <= MAX_SEED - (request.num_images - 1):
        count = request.num_images
        last = "" if count == 1 else f" (with {count} images the last seed, seed + {count - 1}, must be in range too)"
        raise refuse("seed", f"{request.seed} is not in 0..{MAX_SEED}{last}")
    guidance = request.guidance_scale
    if guidance is not None and not (math.isfinite(guidance) and 0.0 <= guidance <= MAX_GUIDANCE):
        raise refuse("guidance_scale", f"{request.guidance_scale} is not in 0..{MAX_GUIDANCE:g}")
    if request.clip_skip is not None and not 1 <= request.clip_skip <= MAX_CLIP_SKIP:
        raise refuse("clip_skip", f"{request.clip_skip} is not in 1..{MAX_CLIP_SKIP}")
    for ref in request.loras:
        check_lora_weight(ref.name, ref.weight, name("loras"))
    check_cache(request.cache, field=name("cache"))
    check_edit_fields(request, field=name("reference_images"))
    if request.num_inference_steps is not None:  # None: the family's default, checked once settled
        check_strength(request.operation, request.strength, request.num_inference_steps,
                       strength_field=name("strength"), steps_field=name("num_inference_steps"))


def text_problem(text: str) -> str | None:
    """Why a string cannot reach the job: a NUL byte (C libraries and PNG text chunks cut there) or a lone
    UTF-16 surrogate (JSON's ``\\ud800``: not text at all; the PNG metadata, the tokenizer and JSON
    encoding fail on it deep inside the job). None when it is fine."""
    if "\x00" in text:
        return "contains a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "contains a lone UTF-16 surrogate (not valid Unicode text)"
    return None


def check_strength(
    operation: Operation,
    strength: float,
    num_inference_steps: int | None,
    *,
    strength_field: str = "strength",
    steps_field: str = "steps",
) -> None:
    """img2img and inpainting run ``int(steps x strength)`` denoising steps (diffusers'
    ``get_timesteps``): below 1 the pipeline would run none and return noise or fail deep inside."""
    if operation in (Operation.TEXT_TO_IMAGE, Operation.EDIT, Operation.UPSCALE):  # no partial denoising
        return
    if not 0.0 < strength <= 1.0:  # NaN fails too
        raise InvalidRequest(f"{strength_field}: {strength} is not in (0, 1]", field=strength_field.lstrip("-"))
    if num_inference_steps is not None and int(num_inference_steps * strength) < 1:  # None: settled later
        raise InvalidRequest(
            f"{strength_field} {strength} x {steps_field} {num_inference_steps} leaves no denoising step to run "
            f"(their product must be at least 1)",
            field=strength_field.lstrip("-"),
        )


def check_request(request: GenerationRequest) -> None:
    """The checks the engine makes whoever the caller is (the API validates earlier, with its own limits).
    Images are checked when they are decoded (``decoded_inputs``)."""
    for name, value in (("width", request.width), ("height", request.height)):
        if value is not None and (value < 8 or value % 8):  # None = settled by the engine
            raise InvalidRequest(f"{name}: {value} is not a positive multiple of 8", field=name)
    if request.num_inference_steps is not None and request.num_inference_steps < 1:
        raise InvalidRequest(f"steps: {request.num_inference_steps} is below 1", field="steps")
    if request.num_images < 1:
        raise InvalidRequest(f"num_images: {request.num_images} is below 1", field="num_images")
    check_library_fields(request)
    check_edit_fields(request)
    if request.operation in (Operation.TEXT_TO_IMAGE, Operation.EDIT):
        return
    if request.operation is Operation.UPSCALE:
        if request.init_image is None:
            raise InvalidRequest("init_image: image_upscale needs the image to upscale", field="init_image")
        if not request.upscaler:
            raise InvalidRequest("upscaler: image_upscale needs an upscaler", field="upscaler")
        for name, given in (("hires", request.hires is not None), ("controlnet", bool(request.controlnet)),
                            ("ip_adapter", request.ip_adapter is not None), ("mask_image", request.mask_image)):
            if given:
                raise InvalidRequest(f"{name}: not used by image_upscale (no diffusion runs)", field=name)
        return
    if request.hires is not None:
        raise InvalidRequest(f"hires: the hires fix is for text-to-image jobs, not {request.operation.value}",
                             field="hires")
    if request.init_image is None:
        raise InvalidRequest(f"init_image: {request.operation.value} needs an init image", field="init_image")
    check_strength(request.operation, request.strength, request.num_inference_steps)
    if request.operation is Operation.INPAINT and request.mask_image is None:
        raise InvalidRequest("mask_image: inpainting needs a mask image (white = repaint)", field="mask_image")


def check_library_fields(request: GenerationRequest) -> None:
    if request.clip_skip is not None and not 1 <= request.clip_skip <= MAX_CLIP_SKIP:
        raise InvalidRequest(f"clip_skip: {request.clip_skip} is not in 1..{MAX_CLIP_SKIP}", field="clip_skip")
    for ref in request.loras:
        check_lora_weight(ref.name, ref.weight, "loras")
    check_cache(request.cache)


def check_lora_weight(name: str, weight: float, field: str) -> None:
    if not -MAX_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT:  # NaN fails too
        limit = f"{MAX_LORA_WEIGHT:g}"
        raise InvalidRequest(f"{field}: weight {weight} of LoRA {name!r} is not in -{limit}..{limit}", field=field)


def decoded_inputs(request: GenerationRequest, *, max_pixels: int) -> tuple[Image.Image | None, Image.Image | None]:
    """The init image and mask an operation uses, decoded (``InvalidImage`` naming the field when one is
    unreadable or the mask's size differs)."""
    init = mask = None
    if request.operation not in (Operation.TEXT_TO_IMAGE, Operation.EDIT) and request.init_image is not None:
        init = request.init_image.decode(max_pixels=max_pixels)
    if request.operation is Operation.INPAINT and request.mask_image is not None:
        mask = request.mask_image.decode(max_pixels=max_pixels, mode="L")
        if init is not None:
            check_mask_matches(init, mask, field=request.mask_image.field)
    return init, mask

"""Checks of a generation's parameters shared by every door: the API's submit (``jobs/inputs.py``,
both backends, the OpenAI and A1111 doors too), ``sdworker generate`` (``cli/generate.py``) and the
engine itself (``diffusers_engine.validate_request``). One function per rule, so a bad request is
refused the same way, with the same message, wherever it comes in; each caller names its own fields
(``strength`` on the wire, ``--strength`` on the command line)."""

from __future__ import annotations

from PIL import Image

from sdworker.domain.request import GenerationRequest, Operation
from sdworker.errors import InvalidRequest
from sdworker.imaging.decode import check_mask_matches

MAX_CLIP_SKIP = 12
MAX_LORA_WEIGHT = 10.0


def check_strength(
    operation: Operation,
    strength: float,
    num_inference_steps: int,
    *,
    strength_field: str = "strength",
    steps_field: str = "steps",
) -> None:
    """img2img and inpainting run ``int(steps x strength)`` denoising steps (diffusers'
    ``get_timesteps``): below 1 the pipeline would run none and return noise or fail deep inside."""
    if operation is Operation.TEXT_TO_IMAGE:
        return
    if not 0.0 < strength <= 1.0:  # NaN fails too
        raise InvalidRequest(f"{strength_field}: {strength} is not in (0, 1]", field=strength_field.lstrip("-"))
    if int(num_inference_steps * strength) < 1:
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
    if request.num_inference_steps < 1:
        raise InvalidRequest(f"steps: {request.num_inference_steps} is below 1", field="steps")
    if request.num_images < 1:
        raise InvalidRequest(f"num_images: {request.num_images} is below 1", field="num_images")
    check_library_fields(request)
    if request.operation is Operation.TEXT_TO_IMAGE:
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


def check_lora_weight(name: str, weight: float, field: str) -> None:
    if not -MAX_LORA_WEIGHT <= weight <= MAX_LORA_WEIGHT:  # NaN fails too
        limit = f"{MAX_LORA_WEIGHT:g}"
        raise InvalidRequest(f"{field}: weight {weight} of LoRA {name!r} is not in -{limit}..{limit}", field=field)


def decoded_inputs(request: GenerationRequest, *, max_pixels: int) -> tuple[Image.Image | None, Image.Image | None]:
    """The init image and mask an operation uses, decoded (``InvalidImage`` naming the field when one is
    unreadable or the mask's size differs)."""
    init = mask = None
    if request.operation is not Operation.TEXT_TO_IMAGE and request.init_image is not None:
        init = request.init_image.decode(max_pixels=max_pixels)
    if request.operation is Operation.INPAINT and request.mask_image is not None:
        mask = request.mask_image.decode(max_pixels=max_pixels, mode="L")
        if init is not None:
            check_mask_matches(init, mask, field=request.mask_image.field)
    return init, mask

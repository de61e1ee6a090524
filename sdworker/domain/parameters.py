"""The A1111 ``parameters`` text for one generated image (torch-free: the job layer may use it too)."""

from __future__ import annotations

from pathlib import PurePath
from typing import TypeVar

from sdworker.domain.hires import HiresFix
from sdworker.domain.request import ControlUnit, GenerationRequest, Operation
from sdworker.domain.result import GenerationResult
from sdworker.domain.scheduler_names import SCHEDULERS
from sdworker.imaging.metadata import ImageParameters, format_parameters

T = TypeVar("T")
SD_DEFAULTS = (20, 7.5)  # steps and CFG a request without them ran with when nothing else says


def model_label(model: str) -> str:
    """What ``Model:`` says: a file's or folder's name without suffix (as A1111 does), else as given."""
    if "/" in model or "\\" in model or model.endswith((".safetensors", ".ckpt")):
        path = PurePath(model)
        if path.suffix or path.is_absolute() or model.startswith((".", "~")):
            return path.stem or model
    return model


def image_parameters(request: GenerationRequest, result: GenerationResult, index: int, model: str) -> ImageParameters:
    """``model`` is what the caller knows (``--model``); the model that ran (``result.model``) wins."""
    spec = SCHEDULERS.get(result.scheduler)
    denoises_from_noise = (Operation.TEXT_TO_IMAGE, Operation.EDIT, Operation.UPSCALE)  # no strength to write
    strength = None if request.operation in denoises_from_noise else request.strength
    hires: tuple[tuple[str, str], ...] = ()
    width, height = result.width, result.height
    if request.hires is not None and result.first_pass_size is not None:
        strength = request.hires.strength
        width, height = result.first_pass_size
        hires = hires_parameters(request.hires, request)
    return ImageParameters(
        prompt=request.prompt,
        negative_prompt=request.negative_prompt,
        steps=_first(request.num_inference_steps, result.num_inference_steps, SD_DEFAULTS[0]),
        sampler=spec.a1111_name if spec else result.scheduler,
        schedule_type=spec.schedule_type if spec else None,
        cfg_scale=_first(request.guidance_scale, result.guidance_scale, SD_DEFAULTS[1]),
        seed=result.seeds[index],
        width=width,
        height=height,
        model=model_label(result.model or model),
        denoising_strength=strength,
        model_hash=result.model_hash,
        clip_skip=result.clip_skip,
        lora_hashes=tuple((lora.name, lora.short_hash) for lora in result.loras if lora.short_hash),
        hires=hires,
        controlnet=tuple((f"ControlNet {i}", controlnet_text(unit)) for i, unit in enumerate(request.controlnet))
        + _ip_adapter_pairs(request),
        step_cache=result.cache,
    )


def _ip_adapter_pairs(request: GenerationRequest) -> tuple[tuple[str, str], ...]:
    """The job's IP-Adapter, in the shape of the ControlNet entries (its model, scale and image count)."""
    ref = request.ip_adapter
    if ref is None:
        return ()
    return (("IP-Adapter", f"Model: {ref.model}, Weight: {ref.scale:g}, Images: {len(ref.images)}"),)


def _first(*values: T | None) -> T:
    """The first value given (a request's settled field, else what the engine says ran)."""
    return next(v for v in values if v is not None)


def controlnet_text(unit: ControlUnit) -> str:
    """One unit as sd-webui-controlnet writes it (the fields we honour; thresholds where they count)."""
    parts = [f"Module: {unit.preprocessor}", f"Model: {unit.model}", f"Weight: {unit.weight:g}"]
    if unit.preprocessor == "canny":
        parts += [f"Threshold A: {unit.low:g}", f"Threshold B: {unit.high:g}"]
    elif unit.preprocessor == "threshold":
        parts.append(f"Threshold A: {unit.low:g}")
    parts += [f"Guidance Start: {unit.start:g}", f"Guidance End: {unit.end:g}"]
    if unit.mode is not None:  # a union ControlNet's mode (sd-webui-controlnet's "Control Mode" is another thing)
        parts.append(f"Union Mode: {unit.mode}")
    return ", ".join(parts)


def hires_parameters(hires: HiresFix, request: GenerationRequest) -> tuple[tuple[str, str], ...]:
    """A1111's hires entries (``StableDiffusionProcessingTxt2Img.init``): the scale or the resize, the
    second pass's steps when they were set, the upscaler, and the second prompts where they differ."""
    pairs: list[tuple[str, str]] = []
    if hires.resize_width or hires.resize_height:
        pairs.append(("Hires resize", f"{hires.resize_width or 0}x{hires.resize_height or 0}"))
    else:
        pairs.append(("Hires upscale", f"{hires.scale:g}"))
    if hires.steps:
        pairs.append(("Hires steps", str(hires.steps)))
    pairs.append(("Hires upscaler", hires.upscaler))
    if hires.prompt is not None and hires.prompt != request.prompt:
        pairs.append(("Hires prompt", hires.prompt))
    if hires.negative_prompt is not None and hires.negative_prompt != request.negative_prompt:
        pairs.append(("Hires negative prompt", hires.negative_prompt))
    return tuple(pairs)


def parameters_text(request: GenerationRequest, result: GenerationResult, index: int, model: str) -> str:
    """The ``parameters`` tEXt value for image ``index`` of ``result``."""
    return format_parameters(image_parameters(request, result, index, model))

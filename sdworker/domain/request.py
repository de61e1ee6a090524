"""What a job asks for: ``GenerationRequest``, the one type that carries a job's fields from the edge
(the API's schemas and compat doors, the CLI) through the job layer and its stores to the engine.
Torch-free.

Adding a field to a job means: the field here (with a default, so old stored jobs still load), the
wire schema that fills it, the engine code that uses it, and tests. The job layer stores and forwards
the whole request (``domain.codec`` turns it into JSON generically), the job's view lists it
(``api/views.py``), the stores never name it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import TYPE_CHECKING

from sdworker.domain.hires import HiresFix
from sdworker.domain.step_cache import StepCache
from sdworker.imaging.decode import decode_base64, decode_image_bytes

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True, slots=True)
class LoraRef:
    """A LoRA to apply to one job: a name in the LoRA folder (with or without ``.safetensors``) and its
    weight (1.0 = as trained; negative values invert it, as in A1111)."""

    name: str
    weight: float = 1.0


class Operation(StrEnum):
    """What a job does. Values are the wire names of the reference design (snake_case form)."""

    TEXT_TO_IMAGE = "image_generation"
    IMAGE_TO_IMAGE = "image_transform"
    INPAINT = "image_inpaint"
    EDIT = "image_edit"  # an edit model (FLUX.1 Kontext, Qwen-Image-Edit): reference images + an instruction
    UPSCALE = "image_upscale"  # init_image resized to width x height by ``upscaler`` (no diffusion)


@dataclass(frozen=True, slots=True)
class InputImage:
    """An image a job was given: the client's encoded file (PNG, JPEG, WebP, ...) and the wire field it
    came in (errors name it). Jobs keep images encoded (JSON-able, small); the engine decodes them.

    At the edge ``data`` may still be the client's base64 text: the job service reserves a queue slot
    before it spends time on images (a full queue answers 429 without decoding 30 MB), then
    ``checked`` turns it into bytes."""

    data: bytes | str
    field: str = "init_image"

    def encoded(self) -> bytes:
        """The file's bytes (strict base64 when still text; ``InvalidImage`` naming the field)."""
        return self.data if isinstance(self.data, bytes) else decode_base64(self.data, field=self.field)

    def checked(self) -> InputImage:
        return self if isinstance(self.data, bytes) else InputImage(self.encoded(), self.field)

    def decode(self, *, max_pixels: int, mode: str = "RGB") -> Image.Image:
        return decode_image_bytes(self.encoded(), field=self.field, max_pixels=max_pixels, mode=mode)

    @classmethod
    def from_image(cls, image: Image.Image, field: str = "init_image") -> InputImage:
        """A PIL image as a lossless PNG (the CLI, tests)."""
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return cls(buffer.getvalue(), field)


@dataclass(frozen=True, slots=True)
class ControlUnit:
    """One ControlNet of a job (rules and preprocessors: ``domain.controlnet``): a model of the ControlNet
    folder, its control image, a weight (diffusers' ``controlnet_conditioning_scale``), the fraction of
    the steps it acts on (``control_guidance_start``/``end``), a preprocessor for the image and, for a union
    ControlNet (one model, several kinds of control map), the mode of this unit's map."""

    model: str
    image: InputImage
    weight: float = 1.0
    start: float = 0.0
    end: float = 1.0
    preprocessor: str = "none"
    low: float = 100.0  # canny's low threshold, threshold's level (A1111's threshold_a)
    high: float = 200.0  # canny's high threshold (threshold_b)
    mode: int | None = None  # a union ControlNet's control mode (diffusers' ``control_mode``); None for others


@dataclass(frozen=True, slots=True)
class IpAdapterRef:
    """An IP-Adapter of a job: an adapter of the IP-Adapter folder, its reference images (several are
    one adapter's images, averaged by its projection as diffusers does) and its scale (diffusers'
    ``set_ip_adapter_scale``; 0 = as without the adapter)."""

    model: str
    images: tuple[InputImage, ...]
    scale: float = 1.0


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One generation. Parameter names follow diffusers'.

    ``width``/``height`` are the output size (multiples of 8); None = the init image's size rounded down
    to a multiple of 8, else the model's native size (``settle_size``). For image-to-image and inpainting
    the init image (and mask) are resized to that size when they differ. ``mask_image``: white =
    repaint. ``seed`` None means "pick one" (the job layer draws it at submit, so every attempt makes
    the same pixels); the engine reports the seed it used. With ``num_images`` > 1, image i uses seed
    ``seed + i`` so any one of them can be made again alone. ``model`` None = the default model.
    """

    prompt: str
    operation: Operation = Operation.TEXT_TO_IMAGE
    negative_prompt: str = ""
    num_inference_steps: int | None = None  # None = the model family's default (``settle_defaults``)
    guidance_scale: float | None = None  # None = the model family's default
    width: int | None = None
    height: int | None = None
    seed: int | None = None
    scheduler: str | None = None  # None = the model's own
    num_images: int = 1
    init_image: InputImage | None = None
    mask_image: InputImage | None = None  # inpainting only
    strength: float = 0.8
    model: str | None = None  # a name from the model library; None = the default model
    loras: tuple[LoraRef, ...] = ()  # merged with the prompt's <lora:name:w> tags; these weights win
    clip_skip: int | None = None  # A1111's convention: 1 = the last layer (no skip), 2 = the penultimate
    hires: HiresFix | None = None  # text-to-image only: a second pass at a larger size (``domain.hires``)
    controlnet: tuple[ControlUnit, ...] = ()  # ControlNet units (``domain.controlnet``), SD 1.x/2.x/SDXL
    cache: StepCache | None = None  # opt-in step caching (``domain.step_cache``); changes the image
    reference_images: tuple[InputImage, ...] = ()  # image_edit only: the images the prompt edits (``domain.edit``)
    ip_adapter: IpAdapterRef | None = None  # SD 1.x/2.x/SDXL: reference images through an IP-Adapter
    upscaler: str | None = None  # image_upscale only: a model of --upscalers-dir, or None/Lanczos/Nearest


def settle_defaults(request: GenerationRequest, steps: int, guidance: float) -> GenerationRequest:
    """The request with ``num_inference_steps`` and ``guidance_scale`` set: what it asked, else the
    model family's defaults (FLUX.1 dev 28 at 3.5, schnell 4 without guidance, SD 20 at 7.5...)."""
    if request.num_inference_steps is not None and request.guidance_scale is not None:
        return request
    return replace(
        request,
        num_inference_steps=steps if request.num_inference_steps is None else request.num_inference_steps,
        guidance_scale=guidance if request.guidance_scale is None else request.guidance_scale,
    )


def settle_size(
    request: GenerationRequest, native_size: int, image_size: tuple[int, int] | None = None
) -> GenerationRequest:
    """The request with its output size set: what it asked, else ``image_size`` (the init image's,
    rounded down to a multiple of 8), else the model's native size."""
    if request.width is not None and request.height is not None:
        return request
    width, height = request.width, request.height
    if image_size is not None:
        width = width if width is not None else max(8, image_size[0] // 8 * 8)
        height = height if height is not None else max(8, image_size[1] // 8 * 8)
    return replace(
        request,
        width=native_size if width is None else width,
        height=native_size if height is None else height,
    )

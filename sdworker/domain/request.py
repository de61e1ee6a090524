"""What a job asks for: the one type that carries a job's fields from the edge (the API's schemas,
the CLI) through the job layer and the stores to the engine. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

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


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One generation, already validated. Parameter names follow diffusers'.

    ``width``/``height`` are the output size (multiples of 8). For image-to-image and inpainting the
    init image (and mask) are resized to that size when they differ. ``mask_image``: white = repaint.
    ``seed`` None means "pick one"; the engine reports the seed it used. With ``num_images`` > 1,
    image i uses seed ``seed + i`` so any one of them can be made again alone.
    """

    prompt: str
    operation: Operation = Operation.TEXT_TO_IMAGE
    negative_prompt: str = ""
    num_inference_steps: int = 20
    guidance_scale: float = 7.5
    width: int = 512
    height: int = 512
    seed: int | None = None
    scheduler: str | None = None  # None = the model's own
    num_images: int = 1
    init_image: Image.Image | None = None
    mask_image: Image.Image | None = None
    strength: float = 0.8
    model: str | None = None  # a name from the model library; None = the default model
    loras: tuple[LoraRef, ...] = ()  # merged with the prompt's <lora:name:w> tags; these weights win
    clip_skip: int | None = None  # A1111's convention: 1 = the last layer (no skip), 2 = the penultimate

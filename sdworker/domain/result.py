"""What a generation gives back: the images and what actually ran (for the PNG text and the job's view)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image


@dataclass(frozen=True, slots=True)
class AppliedLora:
    """A LoRA that ran, for the PNG text: name, weight and A1111's short hash (12 hex characters)."""

    name: str
    weight: float
    short_hash: str | None


@dataclass(frozen=True, slots=True)
class GenerationResult:
    images: tuple[Image.Image, ...]
    seeds: tuple[int, ...]  # one per image
    width: int
    height: int
    scheduler: str  # the name actually used
    steps_run: int  # denoising steps actually run (fewer than requested for img2img/inpaint)
    seconds: float
    model: str = ""  # the library name of the model that ran
    model_hash: str | None = None  # A1111's short model hash (10 hex characters)
    family: str = "sd1"  # sd1 | sd2 | sdxl | flux1: which preview coefficients / TAESD fit its latents
    loras: tuple[AppliedLora, ...] = ()
    clip_skip: int | None = None
    warnings: tuple[str, ...] = ()  # what the model's family ignored of the request, said once each
    num_inference_steps: int | None = None  # what ran (the family's default when the request named none)
    guidance_scale: float | None = None
    first_pass_size: tuple[int, int] | None = None  # a hires fix's first pass (width, height); A1111's "Size"
    cache: str | None = None  # the step cache that ran (``StepCache.text``: "first_block 0.08"), None = off

    @property
    def seed(self) -> int:
        return self.seeds[0]

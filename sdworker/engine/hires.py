"""The hires fix in the engine: pass 1 (text-to-image), the upscale, pass 2 (image-to-image at the
larger size), reported as one job. ``sdworker.domain.hires`` holds the rules and the sizes.

Why the second pass gets the first pass's latents rather than an image (latent modes): that is what
A1111 does (``sample_hr_pass`` interpolates ``samples``), and diffusers' image-to-image pipelines take
4-channel latents as ``image`` as they are (``prepare_latents``: ``if image.shape[1] == 4``), so there
is no VAE decode and encode between the passes. Image upscalers (PIL's, no weights) decode pass 1 as
the pipeline does and let pass 2's pipeline encode the resized image.

Seeds: each pass gets fresh CPU generators seeded ``seed, seed + 1, ...`` (A1111 also draws the second
pass's noise from the job's seeds), so a job equals the two diffusers pipelines called one after the
other with ``torch.Generator("cpu").manual_seed(seed)`` each.

Progress: ``step``/``total`` count both passes (the second pass runs ``int(steps x strength)``
steps, as diffusers' ``get_timesteps`` cuts them), in the user's steps, not the loop's calls
(``step_hook.steps_shown``: PLMS's warm-up call and Heun's second calls are not steps), and every step
says its ``pass_number``. A cancel stops either pass; an interrupt during pass 1 ends the job with pass 1's
image (A1111 skips the second pass too); one between the passes is seen before pass 2 starts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from sdworker.domain.control import CancelToken
from sdworker.domain.hires import IMAGE_UPSCALERS, LATENT_UPSCALE_MODES, HiresFix, HiresSize
from sdworker.engine.step_hook import steps_shown

GRID = 8


def planned_steps(scheduler: Any, steps: int, strength: float | None = None) -> int:
    """How many steps a pass for ``steps`` (and img2img's ``strength``) will report: its loop is the
    timesteps cut as diffusers' ``get_timesteps`` cuts them, counted as ``StepCallback`` counts its steps.
    ``scheduler`` is a throwaway copy."""
    scheduler.set_timesteps(steps, device="cpu")
    timesteps = scheduler.timesteps
    if strength is None:
        return steps_shown(scheduler, len(timesteps))
    start = max(steps - min(int(steps * strength), steps), 0)
    return steps_shown(scheduler, len(timesteps[start * scheduler.order :]))


def upscale_latents(latents: torch.Tensor, size: HiresSize, upscaler: str) -> torch.Tensor:
    """A1111's latent upscale: interpolate to the target's latent grid, then crop the centre."""
    mode, antialias = LATENT_UPSCALE_MODES[upscaler]
    scaled = torch.nn.functional.interpolate(
        latents, size=(size.height // GRID, size.width // GRID), mode=mode, antialias=antialias
    )
    tx, ty = size.crop_x // GRID, size.crop_y // GRID
    if tx or ty:
        scaled = scaled[:, :, ty // 2 : scaled.shape[2] - (ty + 1) // 2, tx // 2 : scaled.shape[3] - (tx + 1) // 2]
    return scaled


def upscale_images(images: list[Image.Image], size: HiresSize, upscaler: str) -> list[Image.Image]:
    """An image upscaler without weights (PIL's filter), then the same centre crop as the latent modes."""
    resample = getattr(Image.Resampling, IMAGE_UPSCALERS[upscaler])
    tx, ty = size.crop_x // GRID, size.crop_y // GRID
    left, top = tx // 2 * GRID, ty // 2 * GRID
    final = size.final
    out = []
    for image in images:
        resized = image.resize((size.width, size.height), resample)
        if tx or ty:
            resized = resized.crop((left, top, left + final[0], top + final[1]))
        out.append(resized)
    return out


def between_passes(cancel: CancelToken | None) -> bool:
    """Before pass 2: raise on a cancel; True when the job was interrupted (finish with pass 1)."""
    if cancel is None:
        return False
    cancel.raise_if_cancelled()
    return cancel.interrupted


ModelUpscale = Callable[[list[Image.Image], tuple[int, int]], list[Image.Image]]


def second_pass_image(first: Any, hires: HiresFix, size: HiresSize, model_upscale: ModelUpscale | None = None) -> Any:
    """Pass 1's output (latents or images, as ``output_type`` asked) made into pass 2's ``image``.
    ``model_upscale``: an upscaler model's (``engine.upscalers``), for an upscaler that is not built in."""
    if hires.latent:
        return upscale_latents(first, size, hires.upscaler)
    if hires.upscaler in IMAGE_UPSCALERS or model_upscale is None:
        return upscale_images(list(first), size, hires.upscaler)
    return crop_centre(model_upscale(list(first), (size.width, size.height)), size)


def crop_centre(images: list[Image.Image], size: HiresSize) -> list[Image.Image]:
    """The centre crop of ``upscale_images`` on images already at ``size.width`` x ``size.height``."""
    tx, ty = size.crop_x // GRID, size.crop_y // GRID
    if not (tx or ty):
        return images
    left, top = tx // 2 * GRID, ty // 2 * GRID
    return [image.crop((left, top, left + size.final[0], top + size.final[1])) for image in images]


def first_pass_output(hires: HiresFix) -> str:
    return "latent" if hires.latent else "pil"


Finish = Callable[[torch.Tensor], list[Image.Image]]

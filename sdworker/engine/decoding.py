"""Latents to images, the way diffusers' text-to-image pipelines end.

Two callers: an interrupted job (``decode_latents``: the latents or x0 it had when it stopped, with
SDXL's float32 upcast) and the end of a cross-job batch (``decode_like_pipeline``: exactly what
``StableDiffusionPipeline.__call__`` does after its loop, so a batched job's pixels equal its solo run).
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image


def decode_latents(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    """What the pipeline's own end does with its final latents, for an interrupted job's latents."""
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    with torch.no_grad():
        if upcast:  # SDXL's VAE overflows in float16; its pipeline decodes in float32 too
            vae.to(torch.float32)
        try:
            scaled = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
            pixels = vae.decode(scaled, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(torch.float16)
    images: list[Image.Image] = pipe.image_processor.postprocess(pixels, output_type="pil")
    return images


def decode_like_pipeline(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    """SD 1.x/2.x ``StableDiffusionPipeline``'s end: VAE decode (no upcast: that pipeline has none),
    no safety checker (the engine loads none), so every image is denormalized."""
    with torch.no_grad():
        pixels = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    do_denormalize = [True] * pixels.shape[0]
    images: list[Image.Image] = pipe.image_processor.postprocess(
        pixels, output_type="pil", do_denormalize=do_denormalize
    )
    return images

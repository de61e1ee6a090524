"""Latents to images, the way diffusers' text-to-image pipelines end.

Two callers: an interrupted job (``decode_latents``: the latents or x0 it had when it stopped, with
SDXL's float32 upcast) and the end of a cross-job batch (``decode_like_pipeline`` and
``decode_like_xl_pipeline``: exactly what ``StableDiffusionPipeline.__call__`` and
``StableDiffusionXLPipeline.__call__`` do after their loop, so a batched job's pixels equal its solo run).
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


def decode_like_xl_pipeline(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    """``StableDiffusionXLPipeline``'s end: float32 VAE where float16 overflows (``force_upcast``), the
    VAE's latent mean and deviation where its config has them, the invisible watermark where the
    pipeline has one."""
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    with torch.no_grad():
        if upcast:
            vae.to(dtype=torch.float32)
            latents = latents.to(next(iter(vae.post_quant_conv.parameters())).dtype)
        try:
            mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
            if mean is not None and std is not None:
                mean_t = torch.tensor(mean).view(1, 4, 1, 1).to(latents.device, latents.dtype)
                std_t = torch.tensor(std).view(1, 4, 1, 1).to(latents.device, latents.dtype)
                latents = latents * std_t / vae.config.scaling_factor + mean_t
            else:
                latents = latents / vae.config.scaling_factor
            pixels = vae.decode(latents, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(dtype=torch.float16)
    watermark = getattr(pipe, "watermark", None)
    if watermark is not None:
        pixels = watermark.apply_watermark(pixels)
    images: list[Image.Image] = pipe.image_processor.postprocess(pixels, output_type="pil")
    return images

"""Stable Diffusion XL: UNet, two CLIP encoders, 4-channel latents of its own VAE, 1024 px."""

from __future__ import annotations

from dataclasses import replace

from sdworker.domain.families import LatentSpace, sd1

# ComfyUI comfy/latent_formats.py class SDXL.
SDXL_LATENT = LatentSpace(
    channels=4,
    factors=(
        (0.3651, 0.4232, 0.4341),
        (-0.2533, -0.0042, 0.1068),
        (0.1076, 0.1111, -0.0362),
        (-0.3165, -0.2492, -0.2188),
    ),
    bias=(0.1084, -0.0175, -0.0011),
    source="ComfyUI latent_formats.SDXL",
)

FACTS = replace(
    sd1.FACTS,
    name="sdxl",
    label="Stable Diffusion XL",
    native_size=1024,
    latent=SDXL_LATENT,
    pipelines={
        "image_generation": "StableDiffusionXLPipeline",
        "image_transform": "StableDiffusionXLImg2ImgPipeline",
        "image_inpaint": "StableDiffusionXLInpaintPipeline",
    },
    index_classes=("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"),
)

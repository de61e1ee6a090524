"""Stable Diffusion 1.x: UNet, one CLIP-L encoder, 4-channel latents, 512 px."""

from __future__ import annotations

from sdworker.domain.families import Defaults, FamilyFacts, LatentSpace

# ComfyUI comfy/latent_formats.py class SD15 (no bias). SD 2.x shares the VAE, hence the latent space.
SD15_LATENT = LatentSpace(
    channels=4,
    factors=(
        (0.3512, 0.2297, 0.3227),
        (0.3250, 0.4974, 0.2350),
        (-0.2829, 0.1762, 0.2721),
        (-0.2120, -0.2616, -0.7177),
    ),
    bias=(0.0, 0.0, 0.0),
    source="ComfyUI latent_formats.SD15",
)

SD_PIPELINES = {
    "image_generation": "StableDiffusionPipeline",
    "image_transform": "StableDiffusionImg2ImgPipeline",
    "image_inpaint": "StableDiffusionInpaintPipeline",
}

FACTS = FamilyFacts(
    name="sd1",
    label="Stable Diffusion 1.x",
    native_size=512,
    size_multiple=8,
    defaults={"": Defaults(steps=20, guidance=7.5)},
    guidance="cfg",
    ignored_fields=(),
    max_prompt_tokens=77,
    prompt_syntax="a1111",
    schedulers=None,
    default_scheduler="the model's own",
    batching=True,
    latent=SD15_LATENT,
    pipelines=SD_PIPELINES,
    index_classes=("StableDiffusionPipeline",),
)

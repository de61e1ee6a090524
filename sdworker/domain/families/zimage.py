"""Z-Image (Alibaba Tongyi): a single-stream 6 B DiT, a Qwen3 text encoder, FLUX.1's 16-channel VAE,
1024 px. Z-Image-Turbo is distilled: 8 steps without CFG (its model card runs ``num_inference_steps=9``,
8 transformer calls, and ``guidance_scale=0``); the base model takes real CFG with a negative prompt.
The variant shows only in the name (turbo); an unnamed one gets Turbo's defaults, the published model.
"""

from __future__ import annotations

from dataclasses import replace

from sdworker.domain.families import Defaults, FamilyFacts, flux1

FACTS = FamilyFacts(
    name="zimage",
    label="Z-Image",
    native_size=1024,
    size_multiple=16,
    defaults={"": Defaults(8, 0.0), "turbo": Defaults(8, 0.0), "base": Defaults(28, 4.0)},
    guidance="cfg",
    ignored_fields=("clip_skip",),
    max_prompt_tokens=512,  # diffusers' max_sequence_length for its Qwen3 encoder
    prompt_syntax="plain",
    schedulers=("euler",),
    default_scheduler="euler",
    batching=True,  # text-to-image; the transformer takes captions of any length (engine/batch_flow.py)
    # FLUX.1's VAE, its latents unpacked: the same coefficients, no patches.
    latent=replace(flux1.FLUX1_LATENT, patch=1, source="ComfyUI latent_formats.Flux (Z-Image uses FLUX.1's VAE)"),
    pipelines={
        "image_generation": "ZImagePipeline",
        "image_transform": "ZImageImg2ImgPipeline",
        "image_inpaint": "ZImageInpaintPipeline",
    },
    index_classes=("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline"),
)

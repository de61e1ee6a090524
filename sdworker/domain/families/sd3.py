"""Stable Diffusion 3 and 3.5 (medium, large, large turbo): an MMDiT transformer, two CLIP encoders and
T5-XXL, 16-channel latents (not packed), 1024 px.

Real classifier-free guidance: ``guidance_scale`` is CFG and ``negative_prompt`` applies (two passes).
Defaults follow Stability's model cards: 3.5 large 28 steps at 3.5, 3.5 medium 40 steps at 4.5, large
turbo 4 steps without guidance; a model whose variant the files do not tell gets 28 at 4.5. The
variant shows in the transformer config (38 layers large, 24 medium; turbo only in the folder's name).
"""

from __future__ import annotations

from sdworker.domain.families import Defaults, FamilyFacts, LatentSpace

# ComfyUI comfy/latent_formats.py class SD3 (see /work/shared/reference/facts.md); the 16 channels as the
# transformer sees them, (z - 0.0609) * 1.5305.
SD3_LATENT = LatentSpace(
    channels=16,
    factors=(
        (-0.0922, -0.0175, 0.0749), (0.0311, 0.0633, 0.0954), (0.1994, 0.0927, 0.0458), (0.0856, 0.0339, 0.0902),
        (0.0587, 0.0272, -0.0496), (-0.0006, 0.1104, 0.0309), (0.0978, 0.0306, 0.0427), (-0.0042, 0.1038, 0.1358),
        (-0.0194, 0.0020, 0.0669), (-0.0488, 0.0130, -0.0268), (0.0922, 0.0988, 0.0951), (-0.0278, 0.0524, -0.0542),
        (0.0332, 0.0456, 0.0895), (-0.0069, -0.0030, -0.0810), (-0.0596, -0.0465, -0.0293), (-0.1448, -0.1463, -0.1189),
    ),
    bias=(0.2394, 0.2135, 0.1925),
    source="ComfyUI latent_formats.SD3",
)

FACTS = FamilyFacts(
    name="sd3",
    label="SD 3.5",
    native_size=1024,
    size_multiple=16,
    defaults={"": Defaults(28, 4.5), "large": Defaults(28, 3.5), "medium": Defaults(40, 4.5),
              "turbo": Defaults(4, 0.0)},
    guidance="cfg",
    ignored_fields=(),
    max_prompt_tokens=256,  # T5's share (diffusers' max_sequence_length); CLIP reads the first 77
    prompt_syntax="plain",
    schedulers=("euler",),
    default_scheduler="euler",
    batching=True,  # text-to-image, CFG rows per job (engine/batch_flow.py)
    latent=SD3_LATENT,
    pipelines={
        "image_generation": "StableDiffusion3Pipeline",
        "image_transform": "StableDiffusion3Img2ImgPipeline",
        "image_inpaint": "StableDiffusion3InpaintPipeline",
    },
    index_classes=("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline"),
)

"""Qwen-Image (Alibaba Qwen): a 20 B MMDiT, a Qwen2.5-VL text encoder, Wan 2.1's VAE (16 channels,
normalised by the per-channel mean and std in its config), latents packed in 2x2 patches, 1328 px.

True classifier-free guidance: ``guidance_scale`` goes to the pipeline's ``true_cfg_scale`` (4 by
default, 50 steps as the model card), with the negative prompt. As the model card does, a job without
a negative prompt runs CFG against ``" "`` (diffusers would otherwise skip CFG silently).
"""

from __future__ import annotations

from sdworker.domain.families import Defaults, FamilyFacts, LatentSpace

# ComfyUI comfy/latent_formats.py class Wan21: the 16 channels normalised, (z - mean) / std, which is
# what Qwen-Image's loop holds (unpacked from its 2x2 patches).
WAN21_LATENT = LatentSpace(
    channels=16,
    factors=(
        (-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747), (0.0372, 0.2344, 0.1420),
        (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665), (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975),
        (-0.0412, 0.0267, -0.1364), (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
        (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950), (0.1984, 0.0913, 0.1861),
    ),
    bias=(-0.1835, -0.0868, -0.3360),
    source="ComfyUI latent_formats.Wan21",
    representation="normalised: (z - latents_mean) / latents_std",
    patch=2,
)

FACTS = FamilyFacts(
    name="qwenimage",
    label="Qwen-Image",
    native_size=1328,
    size_multiple=16,
    defaults={"": Defaults(50, 4.0)},
    guidance="true_cfg",
    ignored_fields=("clip_skip",),
    max_prompt_tokens=1024,  # diffusers' tokenizer_max_length for its Qwen2.5-VL encoder
    prompt_syntax="plain",
    schedulers=("euler",),
    default_scheduler="euler",
    # Text-to-image, prompts padded to the longest and masked (engine/batch_flow.py); an edit model runs
    # alone (its rows carry the reference image's latents).
    batching=True,
    latent=WAN21_LATENT,
    pipelines={
        "image_generation": "QwenImagePipeline",
        "image_transform": "QwenImageImg2ImgPipeline",
        "image_inpaint": "QwenImageInpaintPipeline",
        "image_edit": "QwenImageEditPipeline",  # an edit model only (``domain.edit``; Plus has its own)
    },
    index_classes=("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline",
                   "QwenImageEditPipeline", "QwenImageEditPlusPipeline"),
)

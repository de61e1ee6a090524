"""``demo-sd15-inpainting``: an SD 1.x inpainting checkpoint's shape at the demo's toy sizes.

Like sd-v1-5-inpainting, its UNet takes 9 input channels: the 4 noisy latents, the mask shrunk to
latent size (1) and the latents of the masked image (4). Everything else (VAE, CLIP text encoder,
tokenizer, PNDM) has the SD 1.x demo's shapes, drawn from its own seeds. Saved in diffusers' layout
with ``model_index.json`` naming ``StableDiffusionInpaintPipeline``, as the published folder does.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sdworker.engine.inpainting_unet import INPAINT_IN_CHANNELS

DEMO_SD15_INPAINTING = "demo-sd15-inpainting"


def build_demo_inpainting_components(seed: int) -> dict[str, Any]:
    """The SD 1.x demo's components with a 9-channel UNet (fp32, CPU)."""
    import torch
    from diffusers import UNet2DConditionModel

    from sdworker.engine.demo_model import UNET_CONFIG, build_demo_components

    components = build_demo_components(seed)
    torch.manual_seed(seed + 5)
    unet: Any = UNet2DConditionModel(**{**UNET_CONFIG, "in_channels": INPAINT_IN_CHANNELS})
    components["unet"] = unet.eval()
    return components


def write_demo_inpainting(models: Path, seed: int) -> None:
    from diffusers import StableDiffusionInpaintPipeline

    pipe: Any = StableDiffusionInpaintPipeline(**build_demo_inpainting_components(seed))
    pipe.save_pretrained(models / DEMO_SD15_INPAINTING, safe_serialization=True)

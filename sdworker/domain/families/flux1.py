"""FLUX.1 (Black Forest Labs): a 12 B rectified-flow transformer, CLIP-L + T5-XXL, 16-channel latents
packed in 2x2 patches, 1024 px.

dev is guidance-distilled: ``guidance_scale`` is fed to the transformer as an input (one pass per step,
no negative prompt; 3.5 by default, 28 steps). schnell is timestep-distilled and has no guidance input
(4 steps; ``guidance_scale`` does nothing). Which one a model is shows in its transformer config
(``guidance_embeds``). A Fill transformer (``in_channels`` 384: image + mask latents beside the noise)
inpaints through ``FluxFillPipeline``; Kontext is an edit model (``image_edit`` jobs, ``domain.edit``).

Like Forge and ComfyUI for FLUX, ``negative_prompt`` is ignored (no CFG pass) and reported in the
job's warnings; A1111's emphasis syntax means nothing to T5, so it is removed from the text.
"""

from __future__ import annotations

from sdworker.domain.families import Defaults, FamilyFacts, LatentSpace

# ComfyUI comfy/latent_formats.py class Flux (see /work/shared/reference/facts.md); rows are the 16
# channels of the unpacked latents as the transformer sees them, (z - 0.1159) * 0.3611.
FLUX1_LATENT = LatentSpace(
    channels=16,
    factors=(
        (-0.0346, 0.0244, 0.0681), (0.0034, 0.0210, 0.0687), (0.0275, -0.0668, -0.0433), (-0.0174, 0.0160, 0.0617),
        (0.0859, 0.0721, 0.0329), (0.0004, 0.0383, 0.0115), (0.0405, 0.0861, 0.0915), (-0.0236, -0.0185, -0.0259),
        (-0.0245, 0.0250, 0.1180), (0.1008, 0.0755, -0.0421), (-0.0515, 0.0201, 0.0011), (0.0428, -0.0012, -0.0036),
        (0.0817, 0.0765, 0.0749), (-0.1264, -0.0522, -0.1103), (-0.0280, -0.0881, -0.0499), (-0.1262, -0.0982, -0.0778),
    ),
    bias=(-0.0329, -0.0718, -0.0851),
    source="ComfyUI latent_formats.Flux",
    patch=2,
)

FACTS = FamilyFacts(
    name="flux1",
    label="FLUX.1",
    native_size=1024,
    size_multiple=16,
    defaults={"": Defaults(steps=28, guidance=3.5), "dev": Defaults(steps=28, guidance=3.5),
              "schnell": Defaults(steps=4, guidance=0.0),
              "fill": Defaults(steps=50, guidance=30.0)},  # FLUX.1 Fill [dev]'s model card
    guidance="distilled",
    ignored_fields=("negative_prompt", "clip_skip"),
    max_prompt_tokens=512,
    prompt_syntax="plain",
    schedulers=("euler",),
    default_scheduler="euler",
    # Text-to-image on dev and schnell (engine/batch_flow.py); Fill and Kontext models run alone (their
    # pipelines add image latents to every row).
    batching=True,
    latent=FLUX1_LATENT,
    pipelines={
        "image_generation": "FluxPipeline",
        "image_transform": "FluxImg2ImgPipeline",
        "image_inpaint": "FluxInpaintPipeline",
        "fill": "FluxFillPipeline",
        "image_edit": "FluxKontextPipeline",  # on a Kontext model only (``domain.edit``)
    },
    index_classes=("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline", "FluxFillPipeline",
                   "FluxKontextPipeline"),
)

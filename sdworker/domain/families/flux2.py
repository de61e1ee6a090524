"""FLUX.2 (Black Forest Labs): rectified-flow transformers over a 32-channel VAE whose latents are
packed into 2x2 patches (128 channels) and normalised by the VAE's batch-norm statistics.

Two kinds, told apart by ``model_index.json``'s pipeline class:

- dev (``Flux2Pipeline``): a Mistral Small 3.1 text encoder; guidance-distilled (``guidance_scale`` is
  an input of the transformer, one pass per step), 50 steps at 4 as the model card.
- klein (``Flux2KleinPipeline``): a Qwen3 text encoder. The step-distilled klein (``is_distilled`` in
  ``model_index.json``) runs 4 steps without guidance; klein base runs true CFG against an empty
  negative prompt, 50 steps at 4. Inpainting: ``Flux2KleinInpaintPipeline``.

diffusers has no image-to-image pipeline with ``strength`` for FLUX.2 (its ``image`` argument is a
reference image for editing, a different operation), so image-to-image jobs are a 4xx naming the
model; inpaint runs on klein only. Editing (``image_edit``) is the text-to-image pipeline given reference
images, several at once (``domain.edit``). None of the pipelines takes a negative prompt: it is ignored and
reported in the job's warnings, as are A1111 emphasis marks (removed: the LLM encoders do not weight
tokens).
"""

from __future__ import annotations

from sdworker.domain.families import Defaults, FamilyFacts, LatentSpace

# ComfyUI comfy/latent_formats.py class Flux2: 32 rows for the 32 VAE channels. They apply to the loop's
# latents unpacked from their token sequence to (B, 128, h/16, w/16) and un-patchified to (B, 32, h/8, w/8)
# (ComfyUI's latent_rgb_factors_reshape), still normalised by the VAE's batch norm (what the loop holds).
FLUX2_LATENT = LatentSpace(
    channels=32,
    factors=(
        (0.0058, 0.0113, 0.0073), (0.0495, 0.0443, 0.0836), (-0.0099, 0.0096, 0.0644), (0.2144, 0.3009, 0.3652),
        (0.0166, -0.0039, -0.0054), (0.0157, 0.0103, -0.0160), (-0.0398, 0.0902, -0.0235), (-0.0052, 0.0095, 0.0109),
        (-0.3527, -0.2712, -0.1666), (-0.0301, -0.0356, -0.0180), (-0.0107, 0.0078, 0.0013), (0.0746, 0.0090, -0.0941),
        (0.0156, 0.0169, 0.0070), (-0.0034, -0.0040, -0.0114), (0.0032, 0.0181, 0.0080), (-0.0939, -0.0008, 0.0186),
        (0.0018, 0.0043, 0.0104), (0.0284, 0.0056, -0.0127), (-0.0024, -0.0022, -0.0030), (0.1207, -0.0026, 0.0065),
        (0.0128, 0.0101, 0.0142), (0.0137, -0.0072, -0.0007), (0.0095, 0.0092, -0.0059), (0.0000, -0.0077, -0.0049),
        (-0.0465, -0.0204, -0.0312), (0.0095, 0.0012, -0.0066), (0.0290, -0.0034, 0.0025), (0.0220, 0.0169, -0.0048),
        (-0.0332, -0.0457, -0.0468), (-0.0085, 0.0389, 0.0609), (-0.0076, 0.0003, -0.0043), (-0.0111, -0.0460, -0.0614),
    ),
    bias=(-0.0329, -0.0718, -0.0851),
    source="ComfyUI latent_formats.Flux2",
    representation="batch-norm normalised, un-patchified to 32 channels",
    patch=2,
)

FACTS = FamilyFacts(
    name="flux2",
    label="FLUX.2",
    native_size=1024,
    size_multiple=16,
    defaults={"": Defaults(steps=50, guidance=4.0), "dev": Defaults(steps=50, guidance=4.0),
              "klein": Defaults(steps=4, guidance=1.0), "klein-base": Defaults(steps=50, guidance=4.0)},
    guidance="distilled",
    ignored_fields=("negative_prompt", "clip_skip"),
    max_prompt_tokens=512,  # the pipelines' max_sequence_length for both text encoders
    prompt_syntax="plain",
    schedulers=("euler",),
    default_scheduler="euler",
    # klein and dev text-to-image (engine/batch_flow.py); inpaint and edit jobs run alone.
    batching=True,
    latent=FLUX2_LATENT,
    pipelines={
        "image_generation": "Flux2Pipeline",
        "image_inpaint": "Flux2KleinInpaintPipeline",
        "image_edit": "Flux2KleinPipeline",  # the same pipeline with reference images (``domain.edit``)
    },
    index_classes=("Flux2Pipeline", "Flux2KleinPipeline", "Flux2KleinInpaintPipeline"),
    variant_lacks={"dev": ("image_inpaint",)},  # Flux2KleinInpaintPipeline is klein's; dev has none
)

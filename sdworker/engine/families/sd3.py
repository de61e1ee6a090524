"""SD 3 / 3.5 in diffusers: ``StableDiffusion3Pipeline`` and its img2img and inpaint pipelines over one
set of modules. The loop holds plain ``(B, 16, h, w)`` latents; CFG with the negative prompt."""

from __future__ import annotations

from sdworker.engine.families.flow import FlowAdapter


class Sd3Adapter(FlowAdapter):
    family = "sd3"
    label = "SD 3.5"
    pipelines = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline")


ADAPTER = Sd3Adapter()

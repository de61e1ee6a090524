"""Z-Image in diffusers: ``ZImagePipeline`` and its img2img and inpaint pipelines over one set of
modules. The loop holds plain ``(B, 16, h, w)`` latents; the pipeline hands the scheduler the negated
transformer output, so the velocity the x0 formula reads is the one the scheduler steps with."""

from __future__ import annotations

from sdworker.engine.families.flow import FlowAdapter


class ZImageAdapter(FlowAdapter):
    family = "zimage"
    label = "Z-Image"
    pipelines = ("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline")


ADAPTER = ZImageAdapter()

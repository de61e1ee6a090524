"""A1111's ``POST /sdapi/v1/extra-single-image``: an ``image_upscale`` job (the image, resized by an
upscaler of ``GET /sdapi/v1/upscalers``: PIL's or an upscaler model of ``--upscalers-dir``), answered
in A1111's shape when it is done. Face restoration and a second upscaler are not run (A1111's response
has no place to say so; the fields are accepted and ignored)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field

from sdworker.api import deps
from sdworker.api.compat.jobs import finished_images, wait_or_cancel
from sdworker.api.schemas import job_limits, preview_options
from sdworker.domain.checks import check_job
from sdworker.domain.request import GenerationRequest, InputImage, Operation
from sdworker.jobs.spec import JobDraft

EXTRAS_NAMES = {"init_image": "image", "upscaler": "upscaler_1", "width": "upscaling_resize",
                "height": "upscaling_resize"}


class ExtrasSingleRequest(BaseModel):
    """The fields of A1111's ``ExtrasSingleImageRequest`` that change the image (others are accepted)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    image: str = Field(min_length=1, description="base64 image")
    resize_mode: int = Field(0, ge=0, le=1, description="0: by upscaling_resize; 1: to upscaling_resize_w/h")
    upscaling_resize: float = Field(2.0, ge=1.0, le=8.0)
    upscaling_resize_w: int = Field(512, ge=8, le=16_384)
    upscaling_resize_h: int = Field(512, ge=8, le=16_384)
    upscaler_1: str = Field("None", min_length=1, max_length=256)
    gfpgan_visibility: float = 0.0
    codeformer_visibility: float = 0.0
    extras_upscaler_2_visibility: float = 0.0


async def upscale_one(request: Request, body: ExtrasSingleRequest) -> dict[str, Any]:
    service, settings, owner = deps.service(request), deps.settings(request), deps.owner(request)
    image = InputImage(body.image, "image")
    size = (await asyncio.to_thread(image.decode, max_pixels=settings.max_pixels)).size
    if body.resize_mode == 1:
        width, height = body.upscaling_resize_w, body.upscaling_resize_h
    else:
        width, height = int(size[0] * body.upscaling_resize), int(size[1] * body.upscaling_resize)
    width, height = max(8, width // 8 * 8), max(8, height // 8 * 8)
    job = GenerationRequest(prompt="", operation=Operation.UPSCALE, init_image=image, width=width, height=height,
                            upscaler=body.upscaler_1, num_inference_steps=1)
    check_job(job, job_limits(settings), EXTRAS_NAMES)
    view = await service.submit(JobDraft(job, preview=preview_options(None, settings)), owner=owner)
    view = await wait_or_cancel(service, view.job_id, request, owner)
    pngs = await finished_images(service, view, owner)
    return {"html_info": "", "image": base64.b64encode(pngs[0]).decode("ascii")}

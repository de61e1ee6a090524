"""Turn a ``JobDraft`` into an engine ``GenerationRequest``: decode its base64 images (pixel limit
checked on the header first), check the mask against the image, settle the output size.

CPU work that may take a while on a large image: the service runs it in a worker thread after it has
reserved a queue slot."""

from __future__ import annotations

from sdworker.engine.protocol import GenerationRequest, Operation
from sdworker.errors import InvalidImage, InvalidRequest
from sdworker.imaging.decode import check_mask_matches, decode_base64_image
from sdworker.jobs.spec import JobDraft

DEFAULT_SIZE = 512


def build_request(draft: JobDraft, *, max_pixels: int) -> GenerationRequest:
    init = mask = None
    if draft.init_image is not None:
        init = decode_base64_image(draft.init_image, field=draft.init_image_field, max_pixels=max_pixels)
    if draft.mask_image is not None:
        mask = decode_base64_image(draft.mask_image, field="mask_image", max_pixels=max_pixels, mode="L")
        if init is not None:
            check_mask_matches(init, mask)
    width, height = draft.width, draft.height
    if init is not None:
        width = width if width is not None else init.width // 8 * 8
        height = height if height is not None else init.height // 8 * 8
        if width < 8 or height < 8:
            raise InvalidImage(
                f"{draft.init_image_field}: image is {init.width}x{init.height}; it must be at least 8x8 pixels",
                field=draft.init_image_field,
            )
    width = DEFAULT_SIZE if width is None else width
    height = DEFAULT_SIZE if height is None else height
    if width * height > max_pixels:
        raise InvalidRequest(
            f"width x height = {width}x{height} = {width * height} pixels; the limit is {max_pixels}", field="width"
        )
    return GenerationRequest(
        prompt=draft.prompt,
        operation=draft.operation,
        negative_prompt=draft.negative_prompt,
        num_inference_steps=draft.num_inference_steps,
        guidance_scale=draft.guidance_scale,
        width=width,
        height=height,
        seed=draft.seed,
        scheduler=draft.scheduler,
        num_images=draft.num_images,
        init_image=init,
        mask_image=mask if draft.operation is Operation.INPAINT else None,
        strength=draft.strength,
    )

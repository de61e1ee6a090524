"""Check a ``JobDraft``'s images at submit time: decode the base64 (pixel limit checked on the header
first), open the image to learn its size and check the mask against it, settle the output size.

The images travel on as the client's encoded bytes (a ``JobSpec`` is JSON-able data for either
backend); the GPU side decodes them again after it claims the job. CPU work that may take a while on
a large image: the service runs it in a worker thread after it has reserved a queue slot.
"""

from __future__ import annotations

from dataclasses import dataclass

from sdworker.domain.checks import check_strength
from sdworker.domain.request import Operation
from sdworker.errors import InvalidImage, InvalidRequest
from sdworker.imaging.decode import check_mask_matches, decode_base64, decode_image_bytes
from sdworker.jobs.spec import JobDraft

DEFAULT_SIZE = 512


@dataclass(frozen=True, slots=True)
class CheckedInputs:
    init_image: bytes | None
    mask_image: bytes | None
    width: int
    height: int


def check_inputs(draft: JobDraft, *, max_pixels: int, default_size: int = DEFAULT_SIZE) -> CheckedInputs:
    check_strength(draft.operation, draft.strength, draft.num_inference_steps)
    init_bytes = mask_bytes = None
    init = mask = None
    if draft.init_image is not None:
        init_bytes = decode_base64(draft.init_image, field=draft.init_image_field)
        init = decode_image_bytes(init_bytes, field=draft.init_image_field, max_pixels=max_pixels)
    if draft.mask_image is not None:
        mask_bytes = decode_base64(draft.mask_image, field="mask_image")
        mask = decode_image_bytes(mask_bytes, field="mask_image", max_pixels=max_pixels, mode="L")
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
    width = default_size if width is None else width
    height = default_size if height is None else height
    if width * height > max_pixels:
        raise InvalidRequest(
            f"width x height = {width}x{height} = {width * height} pixels; the limit is {max_pixels}", field="width"
        )
    if draft.operation is not Operation.INPAINT:
        mask_bytes = None
    return CheckedInputs(init_bytes, mask_bytes, width, height)

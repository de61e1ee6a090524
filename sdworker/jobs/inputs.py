"""Check a draft's images at submit time: decode the base64 (pixel limit checked on the header first),
open the image to learn its size and check the mask against it, settle the output size.

The images travel on as the client's encoded bytes (a ``JobSpec`` is JSON-able data for every store);
the engine decodes them again when it runs the job. CPU work that may take a while on a large image:
the service runs it in a worker thread after it has reserved a queue slot.
"""

from __future__ import annotations

from dataclasses import replace

from sdworker.domain.checks import check_strength
from sdworker.domain.request import GenerationRequest, Operation, settle_defaults, settle_size
from sdworker.errors import InvalidImage, InvalidRequest
from sdworker.imaging.decode import check_mask_matches

DEFAULT_SIZE = 512
DEFAULT_PARAMETERS = (20, 7.5)  # steps and guidance where the model is not known (SD 1.x's)


def check_inputs(
    request: GenerationRequest,
    *,
    max_pixels: int,
    default_size: int = DEFAULT_SIZE,
    defaults: tuple[int, float] = DEFAULT_PARAMETERS,
) -> GenerationRequest:
    """The request with its images checked (bytes), its size, steps and guidance settled (``defaults``:
    the model family's steps and guidance); a mask only for inpainting."""
    request = settle_defaults(request, *defaults)
    check_strength(request.operation, request.strength, request.num_inference_steps)
    init = mask = None
    references = [image.decode(max_pixels=max_pixels) for image in request.reference_images]
    if references:  # an edit's output takes the first reference image's size, as img2img's its init image's
        init = references[0]
    if request.init_image is not None:
        init = request.init_image.decode(max_pixels=max_pixels)
    if request.mask_image is not None:
        mask = request.mask_image.decode(max_pixels=max_pixels, mode="L")
        if init is not None:
            check_mask_matches(init, mask, field=request.mask_image.field)
    if init is not None and (init.width < 8 or init.height < 8) and None in (request.width, request.height):
        source = request.init_image or (request.reference_images[0] if request.reference_images else None)
        field = source.field if source is not None else "init_image"
        raise InvalidImage(
            f"{field}: image is {init.width}x{init.height}; it must be at least 8x8 pixels", field=field
        )
    settled = settle_size(request, default_size, init.size if init is not None else None)
    assert settled.width is not None and settled.height is not None
    if settled.width * settled.height > max_pixels:
        raise InvalidRequest(
            f"width x height = {settled.width}x{settled.height} = {settled.width * settled.height} pixels; "
            f"the limit is {max_pixels}",
            field="width",
        )
    keep_mask = settled.operation is Operation.INPAINT and settled.mask_image is not None
    for unit in settled.controlnet:  # each control image must decode (InvalidImage naming its field)
        unit.image.decode(max_pixels=max_pixels)
    ip_adapter = settled.ip_adapter
    if ip_adapter is not None:  # each reference image must decode too
        for image in ip_adapter.images:
            image.decode(max_pixels=max_pixels)
        ip_adapter = replace(ip_adapter, images=tuple(image.checked() for image in ip_adapter.images))
    return replace(
        settled,
        init_image=settled.init_image.checked() if settled.init_image is not None else None,
        mask_image=settled.mask_image.checked() if keep_mask and settled.mask_image is not None else None,
        controlnet=tuple(replace(unit, image=unit.image.checked()) for unit in settled.controlnet),
        reference_images=tuple(image.checked() for image in settled.reference_images),
        ip_adapter=ip_adapter,
    )

"""Inpainting checkpoints of the UNet families (sd-v1-5-inpainting, SD 2 inpainting, SDXL inpainting 0.1).

Their UNet takes 9 input channels: the noisy latents (4), the mask shrunk to latent size (1) and the
latents of the image with the masked part blanked (4). diffusers' ``StableDiffusionInpaintPipeline``
and ``StableDiffusionXLInpaintPipeline`` build those extra channels; the text-to-image and
image-to-image pipelines would hand the UNet 4 channels and fail. So every job on such a model runs
through the inpaint pipeline, as A1111 runs them:

- inpaint: the job's image and mask, unchanged.
- image-to-image: the job's image under a full (white) mask at the job's ``strength``. The masked
  image is then all blank, A1111's default ("inpainting conditioning mask strength" 1.0): the model
  repaints the whole picture starting from the noised init latents.
- text-to-image: a blank image under a full mask at strength 1.0: the loop starts from pure noise
  (diffusers' ``is_strength_max``), and the conditioning says "everything is to be painted".

The pixels therefore equal diffusers' inpaint pipeline called directly with those images.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from sdworker.domain.request import GenerationRequest, Operation

INPAINT_IN_CHANNELS = 9


def is_inpainting_unet(pipe: Any) -> bool:
    """Whether ``pipe``'s UNet is an inpainting one (9 input channels)."""
    unet = getattr(pipe, "unet", None)
    return unet is not None and unet.config.get("in_channels") == INPAINT_IN_CHANNELS


def full_mask_arguments(
    request: GenerationRequest, kwargs: dict[str, Any], init: Image.Image | None
) -> dict[str, Any]:
    """The inpaint pipeline's arguments for a text-to-image or image-to-image job (see the module
    docstring). ``kwargs`` holds the job's common arguments; ``init`` is its image resized to the job's
    size (None for text-to-image). ``request``'s size is settled."""
    assert request.width is not None and request.height is not None
    size = (request.width, request.height)
    if request.operation is Operation.TEXT_TO_IMAGE:
        image, strength = Image.new("RGB", size, (127, 127, 127)), 1.0
    else:
        assert init is not None
        image, strength = init, request.strength
    return {**kwargs, "image": image, "mask_image": Image.new("L", size, 255), "width": request.width,
            "height": request.height, "strength": strength}

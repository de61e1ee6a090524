"""Edit jobs on the engine: the call to an edit model's own diffusers pipeline (``FluxKontextPipeline``,
``QwenImageEditPipeline``, ``QwenImageEditPlusPipeline``, FLUX.2's ``Flux2KleinPipeline`` and
``Flux2Pipeline``) with the job's reference images.

The arguments are what one would pass diffusers by hand, so a job's pixels equal the pipeline called
directly with the same seed. Two choices are ours, and each is stated where it is made:

- Kontext: the output is the job's size (``max_area = width x height``, which keeps it exactly) and the
  reference image is resized to it, not to Kontext's preferred ~1 MP resolutions (``_auto_resize``
  off): the job's size governs, as for img2img, and a 512 px job does not pay for a 1 MP reference.
- Qwen-Image-Edit(-Plus): the pipeline sizes its references itself (384^2 px for the vision encoder,
  1 MP for the VAE); we pass them as decoded. Plus takes the list (several references); the first
  model takes one image.
- FLUX.2: its text-to-image pipeline with the references as ``image`` (a list); the pipeline sizes each
  itself (down to 1 MP, to a multiple of 16 px) and the output is the job's size.
"""

from __future__ import annotations

from typing import Any

import torch
from PIL import Image

from sdworker.domain.request import GenerationRequest
from sdworker.engine.families.flow import FlowAdapter
from sdworker.engine.models import LoadedModel
from sdworker.errors import InvalidRequest


def edit_call(
    adapter: FlowAdapter,
    model: LoadedModel,
    request: GenerationRequest,
    prompt: str,
    generators: list[torch.Generator],
    references: list[Image.Image],
) -> tuple[Any, dict[str, Any]]:
    """The edit pipeline of ``model`` and its keyword arguments. ``request``'s size is settled and its
    model checked to be an edit model (``domain.edit.check_edit_model``)."""
    pipe = model.pipe  # an edit-only model's base pipeline; FLUX.2's text-to-image one
    name = type(pipe).__name__
    # the library said edit, the files did not
    if pipe is None or not ("Kontext" in name or "Edit" in name or "Flux2" in name):
        raise InvalidRequest(f"operation: model {request.model or 'default'!r} loaded as {name}, not an edit "
                             "pipeline", field="operation")
    assert request.width is not None and request.height is not None
    kwargs: dict[str, Any] = {
        "prompt": prompt,
        "num_inference_steps": request.num_inference_steps,
        adapter.guidance_argument: request.guidance_scale,
        "num_images_per_prompt": request.num_images,
        "generator": generators[0] if len(generators) == 1 else generators,
        "width": request.width,
        "height": request.height,
    }
    images = [image.convert("RGB") for image in references]
    if "Kontext" in name:
        size = (request.width, request.height)
        kwargs.update(image=images[0] if images[0].size == size else images[0].resize(size, Image.Resampling.LANCZOS),
                      max_area=request.width * request.height, _auto_resize=False)
        return pipe, kwargs
    if "Flux2" in name:
        kwargs["image"] = images
        return pipe, kwargs
    negative = request.negative_prompt or (" " if (request.guidance_scale or 0) > 1 else "")
    if negative:  # as Qwen-Image's text-to-image: the model card's " " keeps true CFG running
        kwargs["negative_prompt"] = negative
    kwargs["image"] = images if "Plus" in name else images[0]
    return pipe, kwargs

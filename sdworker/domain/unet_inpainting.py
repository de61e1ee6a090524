"""What an inpainting checkpoint of the UNet families (variant ``inpainting``: a 9-channel UNet) cannot
run, checked where the engine checks a request and, in Redis mode, where the API node does.

Every job on such a model runs through the inpaint pipeline (``engine.inpainting_unet``). The hires
fix's second pass and ControlNet build other pipelines that hand the UNet 4 channels, so a job asking
for them is refused at submit (a 4xx naming the field) rather than failing inside diffusers.
"""

from __future__ import annotations

from sdworker.domain.request import GenerationRequest
from sdworker.errors import InvalidRequest

INPAINTING = "inpainting"


def check_inpainting_model(request: GenerationRequest, variant: str, model: str) -> None:
    if variant != INPAINTING:
        return
    for field, asked in (("hires", request.hires is not None), ("controlnet", bool(request.controlnet))):
        if asked:
            raise InvalidRequest(f"{field}: not supported on an inpainting checkpoint ({model!r}) yet; "
                                 "use a non-inpainting model of the same family", field=field)

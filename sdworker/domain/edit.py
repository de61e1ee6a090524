"""Edit jobs (``image_edit``): an edit model takes reference images and an instruction ("make the door
red") and makes a new image. Torch-free rules every door shares.

Which models edit is a fact of the model's variant (the library reads it from ``model_index.json``):
FLUX.1 Kontext takes one reference image; Qwen-Image-Edit one; Qwen-Image-Edit-Plus several (the model
card recommends up to three); FLUX.2 (klein and dev) several, each a reference the transformer sees
beside the noise. Kontext and Qwen-Image-Edit run nothing else; FLUX.2 is a text-to-image model that
also edits (its pipeline takes an optional ``image`` list). A mismatch is a 4xx at submit naming the
field: ``operation`` for a job the model cannot run, ``reference_images`` for images a job does not use
or one too many.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from sdworker.domain.request import GenerationRequest, Operation
from sdworker.errors import InvalidRequest

MAX_REFERENCES = 4  # the wire's bound; each model's own is in EDIT_MODELS


@dataclass(frozen=True, slots=True)
class EditModel:
    label: str
    max_references: int
    edits_only: bool = True  # False: the model's text-to-image (and other) jobs run too


# (family, variant) -> what an edit model of that kind takes.
EDIT_MODELS: dict[tuple[str, str], EditModel] = {
    ("flux1", "kontext"): EditModel("FLUX.1 Kontext", 1),
    ("qwenimage", "edit"): EditModel("Qwen-Image-Edit", 1),
    ("qwenimage", "edit-plus"): EditModel("Qwen-Image-Edit-Plus", 3),
    # diffusers' FLUX.2 pipelines take a list; BFL documents up to 4 references for klein (10 for dev),
    # and every one lengthens the transformer's sequence by a whole image's tokens
    ("flux2", "klein"): EditModel("FLUX.2 klein", 4, edits_only=False),
    ("flux2", "klein-base"): EditModel("FLUX.2 klein", 4, edits_only=False),
    ("flux2", "dev"): EditModel("FLUX.2 dev", 4, edits_only=False),
}


def edit_model(family: str, variant: str) -> EditModel | None:
    """What a model of ``family``/``variant`` takes as an edit model; None when it is not one."""
    return EDIT_MODELS.get((family, variant))


def check_edit_fields(request: GenerationRequest, *, field: str = "reference_images") -> None:
    """The rules that need no model: an edit has reference images and no init image or mask; another
    operation has no reference images. ``field``: the door's name for the images."""
    if request.operation is not Operation.EDIT:
        if request.reference_images:
            raise InvalidRequest(
                f"{field}: only image_edit jobs take reference images, not {request.operation.value}", field=field
            )
        return
    if not request.reference_images:
        raise InvalidRequest(f"{field}: image_edit needs at least one reference image", field=field)
    if len(request.reference_images) > MAX_REFERENCES:
        raise InvalidRequest(
            f"{field}: {len(request.reference_images)} images; at most {MAX_REFERENCES}", field=field
        )
    for name, image in (("init_image", request.init_image), ("mask_image", request.mask_image)):
        if image is not None:
            raise InvalidRequest(f"{image.field}: image_edit takes {field}, not an {name}", field=image.field)
    if request.hires is not None or request.controlnet:
        name = "hires" if request.hires is not None else "controlnet"
        raise InvalidRequest(f"{name}: not available for image_edit jobs", field=name)


def check_edit_model(
    request: GenerationRequest, family: str, variant: str, model_name: str, *, field: str = "reference_images"
) -> None:
    """The rules that need the model: an edit runs on an edit model, with no more images than it takes;
    an edit model runs only edits."""
    model = edit_model(family, variant)
    if request.operation is Operation.EDIT:
        if model is None:
            raise InvalidRequest(
                f"operation: model {model_name!r} is not an edit model (edit models: FLUX.1 Kontext, "
                "Qwen-Image-Edit, Qwen-Image-Edit-Plus, FLUX.2); use image_transform for img2img",
                field="operation",
            )
        if len(request.reference_images) > model.max_references:
            raise InvalidRequest(
                f"{field}: {len(request.reference_images)} images; {model.label} ({model_name!r}) takes at most "
                f"{model.max_references}",
                field=field,
            )
    elif model is not None and model.edits_only:
        raise InvalidRequest(
            f"operation: model {model_name!r} is an edit model ({model.label}); it runs image_edit jobs only",
            field="operation",
        )


def decoded_references(request: GenerationRequest, *, max_pixels: int) -> list[Image.Image]:
    """An edit's reference images, decoded (``InvalidImage`` naming each one's field)."""
    if request.operation is not Operation.EDIT:
        return []
    return [image.decode(max_pixels=max_pixels) for image in request.reference_images]

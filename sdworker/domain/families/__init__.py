"""One module per model family: the facts that make a family what it is, in one place. Torch-free.

The API lists them (``/v1/models``: architecture, native size, defaults), the doors map onto them
(OpenAI ``size: auto`` and ``quality``, A1111's ``cfg_scale``/``distilled_cfg_scale`` and samplers),
the engine reads them (which pipelines, which latent space for previews, which fields a family
ignores). Adding a family is one new module here plus its engine adapter, not edits all over.

``FamilyFacts`` fields, and what each means for a job:

- ``native_size``: the side the family was trained at; the size a job gets when it names none.
- ``size_multiple``: width and height must be multiples of it (8 for the UNet families, whose VAE
  divides by 8; 16 for the transformer families, whose VAE divides by 8 and whose transformer packs 2x2
  latent patches). The native API refuses other sizes; the compat doors round down.
- ``defaults``: steps and guidance per variant (FLUX.1 dev and schnell share a family and differ).
- ``guidance``: what ``guidance_scale`` means: ``cfg`` (classifier-free guidance, two passes, a
  negative prompt applies), ``distilled`` (a value the transformer takes as input, one pass, no
  negative prompt), ``true_cfg`` (CFG for a family whose pipeline calls it ``true_cfg_scale``).
- ``ignored_fields``: request fields the family cannot honour; a job that sets them runs and lists
  them in its ``warnings`` (never silently dropped).
- ``max_prompt_tokens``: the longest prompt its text encoder takes in one piece (CLIP: 77 with
  A1111's chunking lifting the limit; T5: 512).
- ``prompt_syntax``: ``a1111`` (emphasis, BREAK, embeddings: CLIP encoders) or ``plain`` (the syntax
  is removed from the text and a warning says so).
- ``schedulers``: the sampler names a job may ask for; None = every name of ``scheduler_names``.
- ``batching``: whether cross-job batching applies (``batch_plan``).
- ``latent``: the latent space previews decode (channels, latent2rgb coefficients and which
  representation of the latents they expect, whether the loop's latents are packed in patches).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sdworker.domain.prompt_syntax import extract_lora_tags, parse_prompt_attention
from sdworker.domain.request import GenerationRequest, Operation
from sdworker.errors import InvalidRequest

Coefficients = tuple[tuple[float, ...], ...]


@dataclass(frozen=True, slots=True)
class LatentSpace:
    """The latents a family's denoising loop holds, as previews see them.

    ``representation`` says what the coefficients apply to: ``loop`` = the latents exactly as the loop
    holds them (for SD: ``z * scaling_factor``; for FLUX/SD3: ``(z - shift_factor) * scaling_factor``),
    after unpacking patches where ``patch`` > 1. ``patch``: the loop holds ``(B, h*w/p^2, C*p^2)``
    sequences of p x p patches (FLUX: 2), to be unpacked to ``(B, C, h, w)`` before decoding.
    """

    channels: int
    factors: Coefficients  # channels rows x 3 columns (R, G, B)
    bias: tuple[float, float, float]
    source: str  # where the numbers come from
    representation: str = "loop"
    patch: int = 1

    @property
    def coefficients(self) -> tuple[Coefficients, tuple[float, float, float]]:
        """(factors, bias) as ``previews.latent2rgb.Latent2RGBDecoder`` takes them."""
        return self.factors, self.bias


@dataclass(frozen=True, slots=True)
class Defaults:
    steps: int
    guidance: float


@dataclass(frozen=True, slots=True)
class FamilyFacts:
    name: str  # sd1 | sd2 | sdxl | flux1 ...
    label: str  # for people: "FLUX.1"
    native_size: int
    size_multiple: int
    defaults: dict[str, Defaults]  # variant -> defaults; "" is the family's default variant
    guidance: str  # cfg | distilled | true_cfg
    ignored_fields: tuple[str, ...]
    max_prompt_tokens: int
    prompt_syntax: str  # a1111 | plain
    schedulers: tuple[str, ...] | None  # None: all of scheduler_names
    default_scheduler: str
    batching: bool
    latent: LatentSpace
    pipelines: dict[str, str] = field(default_factory=dict)  # operation wire name -> diffusers class
    index_classes: tuple[str, ...] = ()  # model_index.json _class_name values that mean this family
    # variant -> operations (wire names) of ``pipelines`` that variant has no pipeline for (FLUX.2 dev: inpaint)
    variant_lacks: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def defaults_for(self, variant: str = "") -> Defaults:
        return self.defaults.get(variant, self.defaults[""])

    def check_size(self, width: int | None, height: int | None) -> None:
        """The native API's rule: a size that is not a multiple of the family's is a 4xx naming the field
        (None: not given, the model's native size or the init image's, rounded to the multiple)."""
        for name, value in (("width", width), ("height", height)):
            if value is None:
                continue
            if value < self.size_multiple or value % self.size_multiple:
                raise InvalidRequest(
                    f"{name}: {value} is not a positive multiple of {self.size_multiple} "
                    f"(the {self.label} family's size multiple)",
                    field=name,
                )

    def round_size(self, value: int) -> int:
        """The compat doors' rule: round down to the family's multiple (at least one multiple)."""
        return max(self.size_multiple, value - value % self.size_multiple)

    def check_operation(self, operation: str, model: str, variant: str = "") -> None:
        """A job whose operation (wire name) the family (or the model's variant) has no diffusers pipeline
        for is a 4xx at submit, naming the model and the operation (FLUX.2 has no image-to-image
        pipeline, FLUX.2 dev no inpainting one)."""
        lacking = operation in self.variant_lacks.get(variant, ())
        if not lacking and (not self.pipelines or operation in self.pipelines or operation == "image_upscale"):
            return  # an upscale job runs no diffusion pipeline; an edit job's model is checked by domain.edit
        raise InvalidRequest(
            f"operation: model {model!r} ({self.label}) cannot run {operation}: diffusers has no "
            f"{self.label} pipeline for it",
            field="operation",
        )

    def check_scheduler(self, scheduler: str | None, *, field: str = "scheduler") -> None:
        if scheduler is None or self.schedulers is None or scheduler in self.schedulers:
            return
        raise InvalidRequest(
            f"{field}: {scheduler!r} does not apply to the {self.label} family ({self.name}); "
            f"it samples with {', '.join(self.schedulers)}",
            field=field,
        )


def request_warnings(
    request: GenerationRequest, facts: FamilyFacts, variant: str, *, syntax_removed: bool | None = None
) -> tuple[str, ...]:
    """One line per field the family ignores that the request set (the job's ``warnings``).
    ``syntax_removed``: whether A1111 prompt syntax was removed (None: judged from the prompt here)."""
    said: list[str] = []
    if "negative_prompt" in facts.ignored_fields and request.negative_prompt.strip():
        said.append(f"negative_prompt: ignored, {facts.label} has no classifier-free guidance pass")
    if "clip_skip" in facts.ignored_fields and request.clip_skip is not None:
        said.append(f"clip_skip: ignored, {facts.label} does not take it")
    distilled_without = facts.guidance == "distilled" and facts.defaults_for(variant).guidance == 0  # schnell
    if distilled_without and request.guidance_scale not in (None, 0, facts.defaults_for("").guidance):
        said.append(f"guidance_scale: ignored, {facts.label} {variant} is distilled without guidance")
    if syntax_removed is None:
        prompt, _ = extract_lora_tags(request.prompt)
        syntax_removed = facts.prompt_syntax == "plain" and parse_prompt_attention(prompt) != [(prompt, 1.0)]
    if syntax_removed:
        said.append(f"prompt: A1111 emphasis syntax removed, {facts.label}'s text encoders do not weight tokens")
    if facts.name == "zimage" and request.controlnet and request.operation is Operation.INPAINT:
        said.append(f"strength: ignored, {facts.label}'s ControlNet inpainting starts from noise (the ControlNet "
                    "reads the mask and the masked image)")
    return tuple(said)


def _registry() -> dict[str, FamilyFacts]:
    from sdworker.domain.families import flux1, flux2, qwenimage, sd1, sd2, sd3, sdxl, zimage

    modules = (sd1, sd2, sdxl, flux1, sd3, zimage, qwenimage, flux2)
    return {module.FACTS.name: module.FACTS for module in modules}


FAMILIES: dict[str, FamilyFacts] = {}


def family_facts(name: str) -> FamilyFacts:
    """The facts of family ``name`` (sd1 | sd2 | sdxl | flux1 | sd3 | zimage | qwenimage | flux2). ``KeyError`` for
    an unknown one: the library only produces known names, so that is a programming error."""
    if not FAMILIES:
        FAMILIES.update(_registry())
    return FAMILIES[name]


def all_families() -> tuple[FamilyFacts, ...]:
    family_facts("sd1")
    return tuple(FAMILIES.values())


def family_for_index(class_name: str) -> FamilyFacts | None:
    """The family whose pipelines ``model_index.json``'s ``_class_name`` names, if any."""
    return next((f for f in all_families() if class_name in f.index_classes), None)

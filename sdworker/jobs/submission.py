"""What both backends do to a draft before it is queued: checks against the engine that will run it,
the images' check (``inputs``), the seed drawn, the model resolved, the spec built."""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import Protocol

from sdworker.domain.catalog import EngineInfo, LoraInfo, ModelInfo
from sdworker.domain.edit import check_edit_model
from sdworker.domain.families import family_facts, request_warnings
from sdworker.domain.hires import IMAGE_UPSCALERS
from sdworker.domain.prompt_length import PromptTokenizer
from sdworker.domain.prompt_syntax import extract_lora_tags, normalize_lora_name
from sdworker.domain.request import GenerationRequest
from sdworker.domain.step_cache import check_cache_family
from sdworker.domain.unet_inpainting import check_inpainting_model
from sdworker.errors import (
    ControlNetNotFound,
    InvalidRequest,
    IpAdapterNotFound,
    LoraIncompatible,
    LoraNotFound,
    ModelError,
    ModelNotFound,
    ModelTooLarge,
    UnknownScheduler,
    Unsupported,
)
from sdworker.jobs.spec import JobDraft, JobSpec

MAX_SEED = 2**32 - 1  # the engine's range; a drawn seed is reported back and reproduces the image


class ModelLibrary(Protocol):
    """The part of the engine the API side may call from any thread (it reads names and file headers,
    never weights): the memory backend lists and validates against it at submit."""

    def list_models(self) -> tuple[ModelInfo, ...]: ...

    def list_loras(self) -> tuple[LoraInfo, ...]: ...

    def list_controlnets(self) -> tuple[str, ...]: ...

    def list_upscalers(self) -> tuple[str, ...]: ...

    def list_ip_adapters(self) -> tuple[str, ...]: ...

    def refresh(self) -> None: ...

    def validate_request(self, request: GenerationRequest) -> None: ...

    def prompt_tokenizers(self) -> dict[str, tuple[PromptTokenizer, str]]:
        """Model name -> how its prompts are counted and the tokenizer's JSON (``domain.prompt_length``);
        a fleet worker registers them so its API nodes refuse a too-long prompt at submit."""
        ...


def check_against_library(
    draft: JobDraft, library: ModelLibrary, aliases: frozenset[str]
) -> tuple[str, ModelInfo]:
    """The library model a draft runs on (its name and entry: native size, family defaults), after the
    engine's own submit checks (``ModelNotFound`` naming ``model``, LoRA errors naming ``loras`` or
    ``prompt``). Names in ``aliases`` (what ``--model`` said, e.g. ``demo``) mean the default model. May
    read the disk (an unknown name rescans the folder): call it off the event loop."""
    request = draft.request
    wanted = None if request.model is None or request.model in aliases else request.model
    # What ``Engine.validate_request`` looks at: the model, the LoRAs (field and prompt tags) and
    # ``clip_skip``; sizes and images are checked elsewhere (the images may still be base64 text).
    library.validate_request(replace(request, model=wanted, init_image=None, mask_image=None))
    models = library.list_models()
    chosen = next((m for m in models if m.name == wanted), None) if wanted else None
    chosen = chosen or next((m for m in models if m.is_default), None) or (models[0] if models else None)
    if chosen is None:
        raise ModelNotFound("model: the model library is empty", field="model")
    check_edit_model(request, chosen.family, chosen.variant, chosen.name)
    return chosen.name, chosen


def check_model_fits(listed: list[ModelInfo]) -> None:
    """An API node without the engine (Redis mode): ``listed`` is what each live worker said about the
    job's model; when none of them can load it even alone (each over its ``--max-loaded-bytes``), the
    job is refused now with the first worker's reason (model, size, budget) instead of failing later."""
    if listed and all(entry.error for entry in listed):
        raise ModelError(f"model: {listed[0].name!r} cannot be used: {listed[0].error}", field="model")
    if listed and all(entry.too_large for entry in listed):
        raise ModelTooLarge(str(listed[0].too_large), field="model")


def check_lora_names(draft: JobDraft, loras: tuple[LoraInfo, ...], family: str | None) -> None:
    """An API node without the engine (Redis mode): every LoRA the draft names (``loras`` and the
    prompt's ``<lora:...>`` tags) must be one some live worker lists, for the model's family where
    both are known; the worker that claims the job checks the rest (escapes, pickles) with its engine,
    as ``validate_request`` does."""
    known = {lora.name: lora for lora in loras}
    from_field = {normalize_lora_name(ref.name) for ref in draft.request.loras}
    _, tags = extract_lora_tags(draft.request.prompt)
    refs = [*(normalize_lora_name(ref.name) for ref in draft.request.loras), *(ref.name for ref in tags)]
    for name in refs:
        field = "loras" if name in from_field else "prompt"
        lora = known.get(name)
        if lora is None:
            raise LoraNotFound(f"{field}: no LoRA named {name!r} ({_names(set(known))})", field=field)
        if family is not None and lora.family is not None and lora.family != family:
            raise LoraIncompatible(
                f"{field}: LoRA {name!r} is for {lora.family} models; the job's model is {family}", field=field
            )


def check_family_rules(draft: JobDraft, entry: ModelInfo | None) -> None:
    """An API node without the engine (Redis mode): the model family's size multiple and samplers, as
    the engine's ``validate_request`` checks them (4xx naming ``width``/``height`` or ``scheduler``)."""
    if entry is None:
        return
    try:
        facts = family_facts(entry.family)
    except KeyError:  # a family this node's version does not know: the worker checks when it runs
        return
    facts.check_size(draft.request.width, draft.request.height)
    facts.check_scheduler(draft.request.scheduler)
    check_cache_family(draft.request.cache, entry.family, facts.label, entry.name)
    facts.check_operation(draft.request.operation.value, entry.name, entry.variant)
    check_inpainting_model(draft.request, entry.variant, entry.name)


def check_guidance_names(
    request: GenerationRequest, *, controlnets: tuple[str, ...], ip_adapters: tuple[str, ...],
    upscalers: tuple[str, ...],
) -> None:
    """An API node without the engine (Redis mode): the ControlNets, the IP-Adapter and the upscaler a
    job names must be ones some live worker registered (its folders' names), so an unknown name is a
    4xx at submit, as on a single worker, not a job that fails on the worker that claims it."""
    for index, unit in enumerate(request.controlnet):
        if unit.model not in controlnets:
            field = f"controlnet.{index}.model"
            raise ControlNetNotFound(f"{field}: no ControlNet named {unit.model!r} ({_names(set(controlnets))})",
                                     field=field)
    if request.ip_adapter is not None and request.ip_adapter.model not in ip_adapters:
        raise IpAdapterNotFound(f"ip_adapter.model: no IP-Adapter named {request.ip_adapter.model!r} "
                                f"({_names(set(ip_adapters))})", field="ip_adapter.model")
    if request.upscaler is not None and request.upscaler not in (*IMAGE_UPSCALERS, *upscalers):
        raise InvalidRequest(f"upscaler: {request.upscaler!r} is not an upscaler of this fleet "
                             f"({_names({*IMAGE_UPSCALERS, *upscalers})})", field="upscaler")


def _names(known: set[str]) -> str:
    return "available: " + (", ".join(sorted(known)) or "none")


def draw_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def check_against_engine(draft: JobDraft, info: EngineInfo | None) -> None:
    """Refuse what the engine cannot do, at submit (not as a failed job later)."""
    if info is None:
        return  # still loading: the engine checks again when the job runs
    scheduler = draft.request.scheduler
    if scheduler is not None and scheduler not in info.schedulers:
        raise UnknownScheduler(
            f"scheduler {scheduler!r} is not one of: {', '.join(info.schedulers)}", field="scheduler"
        )
    method = draft.preview.method
    if method in ("taesd", "vae", "latent2rgb") and method not in info.preview_methods:
        hint = " (start the server with --taesd PATH)" if method == "taesd" else ""
        raise Unsupported(
            f"preview.method {method!r} is not available on this server{hint}; "
            f"available: auto, none, {', '.join(info.preview_methods)}",
            field="preview.method",
        )


def resolve_model(requested: str | None, served: dict[str, str], default: str | None) -> str:
    """The model id a job runs on. ``served`` maps every accepted name (a model's id, and its short
    label) to the id; ``default`` is used when the job names none."""
    if requested is None:
        if default is None:
            raise ModelNotFound("model: no worker serves any model right now", field="model")
        return default
    model = served.get(requested)
    if model is None:
        names = ", ".join(sorted(set(served.values()))) or "none"
        raise ModelNotFound(f"model: {requested!r} is not served here; served: {names}", field="model")
    return model


def build_spec(
    draft: JobDraft,
    checked: GenerationRequest,
    *,
    job_id: str,
    created_at: float,
    owner: str | None,
    model: str | None,
    entry: ModelInfo | None = None,
) -> JobSpec:
    """The spec to queue: ``checked`` is the draft's request after ``check_inputs`` (images as bytes,
    size settled); the seed is drawn here when the client gave none, so every attempt repeats it."""
    seed = checked.seed if checked.seed is not None else draw_seed()
    return JobSpec(
        job_id=job_id,
        request=replace(checked, seed=seed, model=model),
        preview=draft.preview,
        created_at=created_at,
        owner=owner,
        hive_id=draft.hive_id,
        worker_id=draft.worker_id,
        warnings=draft.warnings + family_warnings(checked, entry),
        webhook=draft.webhook,
        deadline_at=None if draft.deadline_seconds is None else created_at + draft.deadline_seconds,
        priority=draft.priority,
    )


def family_warnings(request: GenerationRequest, entry: ModelInfo | None) -> tuple[str, ...]:
    """The job's ``warnings``: what ``entry``'s family ignores of ``request`` (none when unknown)."""
    if entry is None:
        return ()
    try:
        facts = family_facts(entry.family)
    except KeyError:
        return ()
    return request_warnings(request, facts, entry.variant)

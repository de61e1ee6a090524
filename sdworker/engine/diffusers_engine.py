"""The diffusers engine: text-to-image, image-to-image and inpainting over a library of models.

``DiffusersEngine(settings)`` is cheap; ``load()`` loads the default model. Each job names a model of
the library (``request.model``, None = the default); one that is not in memory is loaded first, and
the least recently used ones leave until its bytes fit the budget (``--max-loaded-bytes``, its parts
sized from their safetensors headers; ``--max-loaded-models`` an optional bound on the count). They are
dropped before the new one loads, so peak memory stays within the budget. Text encoders and VAEs whose
files are identical are loaded once and shared (``components.ComponentPool``); a model that cannot fit
even alone is refused at submit (``validate_request``: ``ModelTooLarge``). Each job then gets its LoRAs activated
(``lora``: exactly the job's, all others off), its prompt encoded (``prompt_encoding``: A1111's
weights and long prompts; plain prompts go to diffusers unchanged), a fresh scheduler (see
``schedulers``), CPU generators seeded ``seed, seed + 1, ...`` (so results equal diffusers' own
pipeline called with ``torch.Generator("cpu").manual_seed(seed)``, on any device), and one step
callback (``step_hook.StepCallback``: progress, previews, cancellation - its module docstring says how
cancel stops the pipeline and why).

``generate_batch`` runs several jobs; those that can share one UNet call per step (``batch_plan``) run
in one denoising loop of our own (``batch``) that keeps each job's generators, scheduler, guidance,
hook and cancel, so each job's pixels equal its solo ``generate``; the others go through ``generate``.

The library (``ModelLibrary``) is torch-free and thread-safe: ``list_models``, ``list_loras``,
``refresh`` and ``validate_request`` may be called from the API thread while a job runs.
"""

from __future__ import annotations

import gc
import logging
import os
import random
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sdworker.domain.batch_plan import BatchKey, batch_key, group_positions
from sdworker.domain.catalog import EngineInfo, LoraInfo, ModelInfo
from sdworker.domain.checks import check_library_fields, check_lora_weight, check_request, decoded_inputs
from sdworker.domain.control import CancelToken
from sdworker.domain.edit import check_edit_model, decoded_references
from sdworker.domain.families import family_facts
from sdworker.domain.hires import HiresFix, check_hires, hires_size
from sdworker.domain.prompt_length import PromptTokenizer, counted_texts
from sdworker.domain.prompt_syntax import extract_lora_tags, merge_loras
from sdworker.domain.request import GenerationRequest, Operation, settle_defaults, settle_size
from sdworker.domain.result import AppliedLora, GenerationResult
from sdworker.domain.scheduler_names import SCHEDULER_NAMES
from sdworker.domain.step_cache import check_cache_family
from sdworker.domain.unet_inpainting import INPAINTING, check_inpainting_model
from sdworker.engine.batch import BatchFamily, failure, run_group
from sdworker.engine.batch_flow import HOOKS as FLOW_BATCH_HOOKS
from sdworker.engine.batch_unet import UNetBatch
from sdworker.engine.components import ComponentPool
from sdworker.engine.controlnet import ControlNets, control_images, controlnet_call, seeded_global_rng
from sdworker.engine.decoding import decode_latents
from sdworker.engine.demo_ip_adapter import IP_ADAPTER_DIR
from sdworker.engine.demo_model import CONTROLNET_DIR
from sdworker.engine.demo_upscaler import UPSCALERS_DIR
from sdworker.engine.edit import edit_call
from sdworker.engine.embeddings import EmbeddingStore
from sdworker.engine.families import flow_adapter, ignored_field_warnings, unpacking_renderer
from sdworker.engine.hashing import HashCache
from sdworker.engine.hires import Finish, between_passes, first_pass_output, planned_steps, second_pass_image
from sdworker.engine.inpainting_unet import full_mask_arguments, is_inpainting_unet
from sdworker.engine.ip_adapter import IpAdapters, reference_images
from sdworker.engine.library import LoraEntry, ModelEntry, ModelLibrary, native_size, unet_variant
from sdworker.engine.models import LoadedModel, ModelSource, build_pipelines, detect_family, load_model
from sdworker.engine.prompt_limits import PromptLimits
from sdworker.engine.protocol import BatchItem, ModelLoadHook, StepHook
from sdworker.engine.schedulers import describe_scheduler
from sdworker.engine.slots import ModelSlot, TaesdCache, build_slot
from sdworker.engine.step_cache import step_cache
from sdworker.engine.step_hook import Interrupted, PreviewRenderer, StepCallback
from sdworker.engine.upscalers import Upscalers, check_upscaler, upscale_images
from sdworker.engine.weights import format_bytes
from sdworker.engine.x0 import X0Recorder
from sdworker.errors import (
    GenerationFailed,
    InvalidRequest,
    JobCancelled,
    ModelError,
    ModelNotFound,
    ModelTooLarge,
    NotReady,
    SdworkerError,
    TooLarge,
)
from sdworker.settings import Settings

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1


class DiffusersEngine:
    """The ``Engine`` protocol over diffusers. ``generate`` and ``load`` on one thread at a time (the
    runner's GPU thread); the library methods from any thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        model_name: str | None = None,
        fuse_loras: bool = False,
        max_cached_loras: int = 8,
    ) -> None:
        self.settings = settings
        self.model_name = model_name
        self.fuse_loras = fuse_loras
        self.max_cached_loras = max_cached_loras
        self._library: ModelLibrary | None = None
        self._library_lock = threading.Lock()
        self._embeddings: EmbeddingStore | None = None
        self._hashes = HashCache(settings.cache_dir)
        self._taesd = TaesdCache(settings)
        self._slots: OrderedDict[str, ModelSlot] = OrderedDict()
        self._pool = ComponentPool(self._hashes)
        self._budget: int | None = settings.max_loaded_bytes
        self._loaded_names: frozenset[str] = frozenset()  # read by list_models from other threads
        self._info: EngineInfo | None = None
        self._last: ModelSlot | None = None
        self._controlnets: ControlNets | None = None
        self._prompt_limits = PromptLimits()
        self._ip_adapters: IpAdapters | None = None
        self._upscalers: Upscalers | None = None

    @classmethod
    def from_pipeline(
        cls, pipe: Any, settings: Settings, model_name: str = "memory", *, family: str | None = None, **kwargs: Any
    ) -> DiffusersEngine:
        """An engine over a pipeline built in memory (benchmarks, tests), on the pipeline's device and dtype.
        Its library holds that one model (plus nothing else: ``--model``/``--models-dir`` are ignored).
        ``family``: a flow-matching family's name (``flux1``...); None = a UNet pipeline, told apart by it."""
        engine = cls(settings, model_name=model_name, **kwargs)
        adapter = flow_adapter(family) if family is not None else None
        family = family if adapter is not None and family is not None else detect_family(pipe)
        denoiser = pipe.transformer if adapter is not None else pipe.unet
        context = None if adapter is not None else pipe.unet.config.get("cross_attention_dim")
        entry = ModelEntry(model_name, family, "memory", ModelSource("memory", model_name), native_size(family),
                           context if isinstance(context, int) else None, None,
                           variant="" if adapter is not None else unet_variant(pipe.unet.config.get("in_channels")))
        engine._library = ModelLibrary(settings, memory=entry)
        if adapter is not None:
            model = adapter.build(pipe, pipe.device, denoiser.dtype, entry.source)
        else:
            model = build_pipelines(pipe, family, pipe.device, denoiser.dtype, entry.source)
        engine._finish_load(engine._add_slot(entry, model))
        return engine

    # -- the library (any thread) -------------------------------------------------------------------

    @property
    def library(self) -> ModelLibrary:
        with self._library_lock:
            if self._library is None:
                self._library = ModelLibrary(self.settings)
            return self._library

    def list_models(self) -> tuple[ModelInfo, ...]:
        """Every model of the library, the default and the loaded ones marked; a model that cannot be
        used (unreadable, or its load failed) is listed with its ``error``."""
        library = self.library
        try:
            default: str | None = library.default_name
        except ModelNotFound:  # an empty folder: nothing to mark
            default = None
        loaded = self._loaded_names
        broken = library.broken()
        entries = library.models()
        usable = tuple(
            ModelInfo(
                name=e.name, family=e.family, kind=e.kind, path=e.source.location, native_size=e.native_size,
                variant=e.variant, default_steps=_defaults(e)[0], default_guidance=_defaults(e)[1],
                size_multiple=family_facts(e.family).size_multiple,
                loaded=e.name in loaded, is_default=e.name == default,
                sha256=self._hashes.cached(e.hash_file) if e.hash_file is not None else None,
                size_bytes=e.size_bytes, too_large=self._too_large(e), error=broken.get(e.name),
            )
            for e in entries
        )
        names = {e.name for e in entries}
        unreadable = tuple(ModelInfo(name=name, family="unknown", kind="", path="", native_size=0, error=reason)
                           for name, reason in broken.items() if name not in names)
        return usable + unreadable

    def list_loras(self) -> tuple[LoraInfo, ...]:
        return tuple(LoraInfo(e.name, str(e.path), e.family, e.format) for e in self.library.loras())

    @property
    def controlnets(self) -> ControlNets:
        """The ControlNet folder: ``--controlnet-dir``, else the demo bundle's with ``--model demo``."""
        if self._controlnets is None:
            folder = self.settings.controlnet_dir
            library = self.library
            if folder is None and library.is_demo and library.models_dir is not None:
                folder = library.models_dir.parent / CONTROLNET_DIR
            self._controlnets = ControlNets(Path(folder).expanduser() if folder is not None else None)
        return self._controlnets

    @property
    def ip_adapters(self) -> IpAdapters:
        """The IP-Adapter folder: ``--ip-adapter-dir``, else the demo bundle's with ``--model demo``."""
        if self._ip_adapters is None:
            folder = self.settings.ip_adapter_dir
            library = self.library
            if folder is None and library.is_demo and library.models_dir is not None:
                folder = library.models_dir.parent / IP_ADAPTER_DIR
            self._ip_adapters = IpAdapters(Path(folder).expanduser() if folder is not None else None)
        return self._ip_adapters

    @property
    def upscalers(self) -> Upscalers:
        """The upscaler models: ``--upscalers-dir``, else the demo bundle's with ``--model demo``."""
        if self._upscalers is None:
            folder = self.settings.upscalers_dir
            library = self.library
            if folder is None and library.is_demo and library.models_dir is not None:
                folder = library.models_dir.parent / UPSCALERS_DIR
            self._upscalers = Upscalers(Path(folder).expanduser() if folder is not None else None)
        return self._upscalers

    def list_controlnets(self) -> tuple[str, ...]:
        return tuple(self.controlnets.names())

    def list_upscalers(self) -> tuple[str, ...]:
        return tuple(self.upscalers.names())

    def list_ip_adapters(self) -> tuple[str, ...]:
        return tuple(self.ip_adapters.names())

    def refresh(self) -> None:
        """Rescan the models folder and the embeddings folder."""
        self.library.refresh()
        if self._embeddings is not None:
            self._embeddings.refresh()

    def validate_request(self, request: GenerationRequest) -> None:
        """Check at submit time that the request's model and LoRAs (field and prompt tags) exist and fit
        each other, without loading anything: ``ModelNotFound`` (404, field ``model``), ``LoraNotFound``
        (404), ``LoraIncompatible``/``InvalidRequest``/``UnsafeCheckpoint`` (4xx, field ``loras`` or
        ``prompt``), and ``clip_skip`` and LoRA weights out of range. Images are not looked at (the API
        calls this before decoding them)."""
        check_library_fields(request)
        self._resolve(request)

    def _resolve(self, request: GenerationRequest) -> tuple[ModelEntry, list[tuple[LoraEntry, float]], str]:
        library = self.library
        entry = library.model(request.model)
        self._check_fits(entry)
        facts = family_facts(entry.family)
        if request.width is not None and request.height is not None:  # else settled in generate
            facts.check_size(request.width, request.height)
        facts.check_scheduler(request.scheduler)
        check_cache_family(request.cache, entry.family, facts.label, entry.name)
        facts.check_operation(request.operation.value, entry.name, entry.variant)
        check_edit_model(request, entry.family, entry.variant, entry.name)
        if request.operation is Operation.UPSCALE and request.upscaler:
            check_upscaler(self.upscalers, request.upscaler)
        if request.hires is not None:
            self._check_hires(request, request.hires, entry)
        check_inpainting_model(request, entry.variant, entry.name)
        if request.controlnet:
            if request.cache is not None:  # the cache hooks skip blocks the ControlNet's residuals are added to
                raise InvalidRequest("cache: step caching with ControlNet units is not supported yet", field="cache")
            self.controlnets.check_units(request.controlnet, entry, request.operation)
        if request.ip_adapter is not None:
            self.ip_adapters.check(request.ip_adapter, entry)
        prompt, tags = extract_lora_tags(request.prompt)
        from_field = {r.name for r in merge_loras(request.loras, ())}
        loras: list[tuple[LoraEntry, float]] = []
        for ref in merge_loras(request.loras, tags):
            field = "loras" if ref.name in from_field else "prompt"
            check_lora_weight(ref.name, ref.weight, field)
            lora = library.lora(ref.name, field=field)
            library.check_lora_fits(lora, entry, field=field)
            loras.append((lora, ref.weight))
        self._check_prompt_length(entry, prompt, request.negative_prompt)
        return entry, loras, prompt

    def _check_prompt_length(self, entry: ModelEntry, prompt: str, negative_prompt: str) -> None:
        """A prompt longer than a transformer family's text encoder reads is a 4xx (``prompt_limits``)."""
        facts = family_facts(entry.family)
        self._prompt_limits.check(facts, self._tokenizer_folder(entry), counted_texts(facts, prompt, negative_prompt))

    def _tokenizer_folder(self, entry: ModelEntry) -> str | None:
        if flow_adapter(entry.family) is None:
            return None  # CLIP families: A1111's chunks take any length
        if entry.kind == "folder":
            return entry.source.location
        if self.settings.model_config_dir:
            return str(self.settings.model_config_dir)
        return self.library.config_folder_for(entry)

    def prompt_tokenizers(self) -> dict[str, tuple[PromptTokenizer, str]]:
        """Model name -> how its prompts are counted and its tokenizer's JSON, for every model whose
        family limits prompt length: what a fleet worker registers so API nodes refuse a long prompt at
        submit as this engine would (``domain.prompt_length``). Reads tokenizer files (once per model)."""
        found: dict[str, tuple[PromptTokenizer, str]] = {}
        for info in self.list_models():
            entry = self.library.model(info.name)
            exported = self._prompt_limits.export(family_facts(entry.family), self._tokenizer_folder(entry))
            if exported is not None:
                found[info.name] = exported
        return found

    def _check_pixels(self, width: int, height: int) -> None:
        """This worker's own limit (``--max-pixels``, by default its device's): a fleet's API node
        checked the request against its settings, not against the worker that runs it."""
        if width * height > self.settings.max_pixels:
            raise TooLarge(
                f"width x height = {width}x{height} = {width * height} pixels; this worker's limit "
                f"(--max-pixels) is {self.settings.max_pixels}",
                field="width",
            )
    @property
    def budget_bytes(self) -> int:
        """``--max-loaded-bytes``, or by default most of the device's memory (``default_budget``)."""
        if self._budget is None:
            self._budget = default_budget(self.settings)
        return self._budget

    @property
    def loaded_bytes(self) -> int:
        """Bytes of model weights in memory now (shared parts counted once); read from any thread."""
        return self._pool.loaded_bytes

    def _too_large(self, entry: ModelEntry) -> str | None:
        size = entry.size_bytes
        if size is None or size <= self.budget_bytes:
            return None
        return (f"model: {entry.name!r} needs {format_bytes(size)} ({size} bytes) loaded, more than this worker's "
                f"memory budget of {format_bytes(self.budget_bytes)} ({self.budget_bytes} bytes, --max-loaded-bytes) "
                "even with no other model loaded")

    def _check_fits(self, entry: ModelEntry) -> None:
        message = self._too_large(entry)
        if message is not None:
            raise ModelTooLarge(message, field="model")

    def _check_hires(self, request: GenerationRequest, hires: HiresFix, entry: ModelEntry) -> None:
        if entry.family not in ("sd1", "sd2", "sdxl"):
            raise InvalidRequest(f"hires: the hires fix runs on SD 1.x, 2.x and SDXL models; {entry.name!r} is "
                                 f"{family_facts(entry.family).label}", field="hires")
        settled = settle_size(settle_defaults(request, *_defaults(entry)), entry.native_size)
        assert settled.width is not None and settled.height is not None and settled.num_inference_steps is not None
        check_hires(hires, settled.width, settled.height, settled.num_inference_steps,
                    max_pixels=self.settings.max_pixels, upscaler_models=tuple(self.upscalers.names()))

    # -- Engine protocol ------------------------------------------------------------------------------

    def load(self) -> None:
        """Load the default model (slow)."""
        if self._info is None:
            entry = self.library.model(None)
            self._finish_load(self._slot(entry, None))

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise NotReady("the model is not loaded yet")
        return self._info

    @property
    def model(self) -> LoadedModel:
        """The model of the last job (or the default one after ``load``)."""
        if self._last is None:
            raise NotReady("the model is not loaded yet")
        return self._last.model

    def generate(
        self,
        request: GenerationRequest,
        on_step: StepHook | None = None,
        cancel: CancelToken | None = None,
        on_model_load: ModelLoadHook | None = None,
    ) -> GenerationResult:
        entry, loras, prompt = self._resolve(request)
        request = settle_defaults(request, *_defaults(entry))
        check_request(request)
        init, mask = decoded_inputs(request, max_pixels=self.settings.max_pixels)
        references = decoded_references(request, max_pixels=self.settings.max_pixels)
        source = init or (references[0] if references else None)  # the output's size when the job names none
        multiple = family_facts(entry.family).size_multiple  # an init image's size rounds down to the family's
        image_size = (source.size[0] // multiple * multiple, source.size[1] // multiple * multiple) if source else None
        request = settle_size(request, entry.native_size, image_size)
        assert request.width is not None and request.height is not None
        width, height = request.width, request.height
        self._check_pixels(width, height)
        if cancel is not None:
            cancel.raise_if_cancelled()
        slot = self._slot(entry, on_model_load)
        if cancel is not None:
            cancel.raise_if_cancelled()
        applied = slot.loras.activate(loras)
        seed = _seed(request)
        seeds = tuple(seed + i for i in range(request.num_images))
        if request.operation is Operation.UPSCALE:  # no diffusion: the upscaler alone
            assert init is not None and request.upscaler is not None  # check_request
            started = time.perf_counter()
            images = upscale_images(self.upscalers, request.upscaler, [init], (width, height), slot.model.device)
            return slot.result(request, images, seeds, "", 0, time.perf_counter() - started, applied)
        if request.hires is not None:
            return self._generate_hires(slot, request, request.hires, prompt, seeds, applied, on_step, cancel)
        adapter = flow_adapter(slot.model.family)
        warnings: tuple[str, ...] = ()
        if adapter is None:
            scheduler, scheduler_name = slot.schedulers.create(request.scheduler)
            pipe, kwargs = self._call_arguments(slot, request, prompt, seeds, init, mask)
            if request.controlnet:
                pipe, kwargs = self._with_controlnet(slot, request, pipe, kwargs)
            renderer: PreviewRenderer = slot.render_preview
            finish: Finish = lambda latents: decode_latents(pipe, latents)  # noqa: E731
        else:
            facts = family_facts(slot.model.family)
            scheduler, _ = slot.schedulers.create(None)  # the family's own sampler (flow-matching Euler)
            scheduler_name = facts.default_scheduler
            prompt, syntax_removed = adapter.plain_prompt(prompt)
            warnings = ignored_field_warnings(request, facts, entry.variant, syntax_removed=syntax_removed)
            generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
            if request.operation is Operation.EDIT:
                pipe, kwargs = edit_call(adapter, slot.model, request, prompt, generators, references)
            else:
                pipe, kwargs = adapter.call_arguments(slot.model, request, prompt, generators, init, mask)
                if request.controlnet:
                    pipe, kwargs = self._with_controlnet(slot, request, pipe, kwargs)
            renderer = unpacking_renderer(slot.render_preview, adapter, request, pipe)
            finish = lambda latents: adapter.decode(pipe, latents, width, height)  # noqa: E731
        started = time.perf_counter()
        kwargs["output_type"] = "pil"
        callback = StepCallback(on_step, cancel, X0Recorder(scheduler), renderer)
        assert request.num_inference_steps is not None  # settled
        with step_cache(getattr(pipe, "transformer", None), request.cache, request.num_inference_steps), \
                seeded_global_rng(pipe, seed, slot.model.device):
            if request.ip_adapter is None:
                images, steps_run, _ = self._run_pass(slot, pipe, kwargs, scheduler, callback, finish)
            else:  # the adapter is on for this call only (``engine.ip_adapter``)
                references = reference_images(request.ip_adapter, self.settings.max_pixels)
                with self.ip_adapters.applied(pipe, request.ip_adapter, references, kwargs) as adapted:
                    images, steps_run, _ = self._run_pass(slot, adapted, kwargs, scheduler, callback, finish)
        result = slot.result(request, images, seeds, scheduler_name, steps_run, time.perf_counter() - started,
                             applied, warnings)
        return result if request.cache is None else replace(result, cache=request.cache.text())

    def _run_pass(
        self, slot: ModelSlot, pipe: Any, kwargs: dict[str, Any], scheduler: Any, callback: StepCallback,
        finish: Finish,
    ) -> tuple[Any, int, bool]:
        """One pipeline call with the job's scheduler and step callback: its ``images`` (latents when
        ``output_type`` is ``latent``), the steps run and whether it was interrupted (then the images are
        ``finish(latents)``'s). A failure is mapped to ``GenerationFailed``; nothing of the job stays on
        the pipeline."""
        pipe.scheduler = scheduler
        completed = False
        steps_run: int | None = None
        try:
            try:
                output = pipe(**kwargs, callback_on_step_end=callback).images
            except Interrupted as stop:  # A1111's interrupt: finish with the latents we have
                output = finish(stop.latents)
                steps_run = stop.steps_done
            completed = True
        except (JobCancelled, SdworkerError):
            raise
        except torch.OutOfMemoryError as exc:
            log.exception("out of memory in generation")
            raise GenerationFailed("out of GPU memory; try fewer images or a smaller size") from exc
        except Exception as exc:
            log.exception("generation failed")
            raise GenerationFailed(f"generation failed ({type(exc).__name__}); see the worker log") from exc
        finally:
            if callback.recorder is not None:
                callback.recorder.close()
            pipe.scheduler = slot.base_scheduler  # nothing keeps the job's scheduler (and its tensors)
            kwargs.clear()  # the prompt embeddings
            # After a cancel or a failure, hand the unwound job's cached blocks back to the driver. Not after
            # a normal job: the next job would pay cudaMalloc again for the same blocks.
            if not completed and slot.model.device.type == "cuda":
                gc.collect()
                torch.cuda.empty_cache()
        if steps_run is None:
            return output, callback.steps_done, False
        return output, steps_run, True

    def _guided_pass(
        self, slot: ModelSlot, request: GenerationRequest, pipe: Any, kwargs: dict[str, Any], scheduler: Any,
        callback: StepCallback, control_size: tuple[int, int] | None = None,
    ) -> tuple[Any, int, bool]:
        """One pass of the hires fix with the job's ControlNet units and IP-Adapter on, as sd-webui-controlnet
        applies both to both passes (its units' default ``hr_option``, "Both"). ``request.operation``
        picks the ControlNet pipeline (text-to-image, then image-to-image); the adapter comes off after
        each pass (``IpAdapters.applied``). ``control_size``: pass 2's size, at which the units' images are
        preprocessed again (``controlnet.control_images``)."""
        if request.controlnet:
            pipe, kwargs = self._with_controlnet(slot, request, pipe, kwargs, control_size)
        finish: Finish = lambda latents: decode_latents(pipe, latents)  # noqa: E731
        if request.ip_adapter is None:
            return self._run_pass(slot, pipe, kwargs, scheduler, callback, finish)
        references = reference_images(request.ip_adapter, self.settings.max_pixels)
        with self.ip_adapters.applied(pipe, request.ip_adapter, references, kwargs) as adapted:
            return self._run_pass(slot, adapted, kwargs, scheduler, callback, finish)

    def _generate_hires(
        self,
        slot: ModelSlot,
        request: GenerationRequest,
        hires: HiresFix,
        prompt: str,
        seeds: tuple[int, ...],
        applied: tuple[AppliedLora, ...],
        on_step: StepHook | None,
        cancel: CancelToken | None,
    ) -> GenerationResult:
        """The hires fix (``engine.hires``): pass 1, the upscale, pass 2, reported as one job."""
        assert request.width is not None and request.height is not None  # settled in generate
        assert request.num_inference_steps is not None
        size = hires_size(request.width, request.height, hires)
        second = replace(
            request, num_inference_steps=hires.steps or request.num_inference_steps,
            negative_prompt=request.negative_prompt if hires.negative_prompt is None else hires.negative_prompt,
        )
        second_prompt = prompt if hires.prompt is None else extract_lora_tags(hires.prompt)[0]
        first_total = planned_steps(slot.schedulers.create(request.scheduler)[0], request.num_inference_steps)
        assert second.num_inference_steps is not None
        second_total = planned_steps(slot.schedulers.create(request.scheduler)[0], second.num_inference_steps,
                                     hires.strength)
        total = first_total + second_total
        started = time.perf_counter()
        scheduler, scheduler_name = slot.schedulers.create(request.scheduler)
        pipe, kwargs = self._call_arguments(slot, request, prompt, seeds, None, None)
        kwargs["output_type"] = first_pass_output(hires)
        callback = StepCallback(on_step, cancel, X0Recorder(scheduler), slot.render_preview, total=total)
        first, steps_run, interrupted = self._guided_pass(slot, request, pipe, kwargs, scheduler, callback)
        if interrupted or between_passes(cancel):  # interrupted: pass 1's image is the result
            images = first if interrupted else _as_images(pipe, first)
            return slot.result(request, images, seeds, scheduler_name, steps_run, time.perf_counter() - started,
                               applied)
        scheduler, _ = slot.schedulers.create(request.scheduler)
        pipe = slot.model.image_to_image
        kwargs = self._common_arguments(slot, second, second_prompt, seeds)
        device = slot.model.device
        upscale = lambda images, to: self.upscalers.upscale(hires.upscaler, images, to, device)  # noqa: E731
        kwargs.update(image=second_pass_image(first, hires, size, upscale), strength=hires.strength,
                      output_type="pil")
        if request.controlnet:  # the control maps are made at the second pass's size, not the first's
            kwargs.update(width=size.final[0], height=size.final[1])
        del first
        callback = StepCallback(on_step, cancel, X0Recorder(scheduler), slot.render_preview, offset=first_total,
                                total=total, pass_number=2)
        images, more, _ = self._guided_pass(slot, replace(second, operation=Operation.IMAGE_TO_IMAGE), pipe, kwargs,
                                            scheduler, callback, size.final)
        return slot.result(request, images, seeds, scheduler_name, steps_run + more, time.perf_counter() - started,
                           applied, size=size.final, first_pass_size=(request.width, request.height))

    def generate_batch(
        self, items: Sequence[BatchItem], on_model_load: ModelLoadHook | None = None
    ) -> list[GenerationResult | Exception]:
        """Run several jobs; those that can share one UNet call per step do (``batch_plan`` says which:
        text-to-image, same model, size, steps and scheduler, no LoRA; SDXL and the flow families too), in one
        loop per group (``batch``: each job's own generators, scheduler, guidance, hook and cancel, so
        its pixels equal its solo run). The others run one after another through ``generate``, and so
        does a group of one. Groups run in the order of their first item. Returns, per item and in
        order, its result or the exception ``generate`` would have raised for it; never raises for one
        job's problem."""
        keys: list[BatchKey | None] = []
        prompts: list[str] = []
        items = list(items)
        for position, item in enumerate(items):
            try:  # a request with a mistake runs alone: generate reports the mistake as it always does
                check_request(item.request)
                entry, loras, prompt = self._resolve(item.request)
                settled = settle_defaults(item.request, *_defaults(entry))
                if item.request.operation is Operation.TEXT_TO_IMAGE:  # the others run alone anyway
                    settled = settle_size(settled, entry.native_size)
                    assert settled.width is not None and settled.height is not None
                    self._check_pixels(settled.width, settled.height)  # too large: runs alone, fails there
                item = items[position] = replace(item, request=settled)
                # An inpainting UNet takes 9 channels; the batch loop feeds it 4 (its jobs run through generate).
                batches = family_facts(entry.family).batching and entry.variant != INPAINTING
                keys.append(None if loras or not batches else batch_key(item.request, entry.name))
            except Exception:
                keys.append(None)
                prompt = item.request.prompt
            prompts.append(prompt)
        outcomes: dict[int, GenerationResult | Exception] = {}
        for group in group_positions(keys):
            if len(group) > 1:
                outcomes.update(self._generate_group(items, group, prompts, on_model_load))
            else:
                outcomes[group[0]] = self._generate_alone(items[group[0]], on_model_load)
        return [outcomes[position] for position in range(len(items))]

    def _generate_alone(self, item: BatchItem, on_model_load: ModelLoadHook | None) -> GenerationResult | Exception:
        try:
            return self.generate(item.request, item.on_step, item.cancel, on_model_load)
        except Exception as exc:  # already mapped by generate (or a validation error): the item's outcome
            return exc

    def _generate_group(
        self, items: Sequence[BatchItem], group: list[int], prompts: list[str], on_model_load: ModelLoadHook | None
    ) -> dict[int, GenerationResult | Exception]:
        try:
            slot = self._slot(self.library.model(items[group[0]].request.model), on_model_load)
            applied = slot.loras.activate([])  # none of the group has a LoRA; an earlier job's go off
        except Exception as exc:  # as generate would fail each of them
            return {position: failure(exc) for position in group}
        members = [(p, items[p], prompts[p], _seed(items[p].request)) for p in group]
        hooks = batch_hooks(slot.model.family)
        network = "UNet" if flow_adapter(slot.model.family) is None else "transformer"
        log.info("%d jobs share each %s call of one batch", len(group), network)
        outcomes = run_group(slot, hooks, applied, members, lambda item: self._generate_alone(item, on_model_load))
        if slot.model.device.type == "cuda" and any(isinstance(o, Exception) for o in outcomes.values()):
            gc.collect()  # as generate does after a cancel or a failure: hand the cached blocks back
            torch.cuda.empty_cache()
        return outcomes

    def close(self) -> None:
        for name in list(self._slots):
            self._evict(name)
        self._last = None
        self._info = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- loading --------------------------------------------------------------------------------------

    def _slot(self, entry: ModelEntry, on_model_load: ModelLoadHook | None) -> ModelSlot:
        """The loaded model for ``entry``: from memory, or loaded now (evicting the least recently used)."""
        slot = self._slots.get(entry.name)
        if slot is not None:
            self._slots.move_to_end(entry.name)
            if self._last is not slot:
                self._step_aside(slot)
            self._last = slot
            return slot
        self._check_fits(entry)
        # Parts another loaded model already holds are kept through the evictions below and reused.
        offload = entry.offload or self.settings.offload
        keys = self._pool.shared_keys(entry.parts) if offload == "none" else {}
        reused = self._pool.hold(entry.name, keys)
        need = self._pool.missing_bytes(entry.parts, keys)
        limit = self.settings.max_loaded_models
        while self._slots and (self._pool.loaded_bytes + need > self.budget_bytes
                               or (limit is not None and len(self._slots) >= limit)):
            self._evict(next(iter(self._slots)))
        _notify(on_model_load, entry.name, "started", 0.0)
        started = time.perf_counter()
        try:
            config = None
            if entry.kind == "file" and not self.settings.model_config_dir:
                config = self.library.config_folder_for(entry)
            model = load_model(self.settings, entry.source, model_config=config, family=_flow_family(entry),
                               transformer_only=entry.transformer_only, components=reused, offload=offload)
            del reused
            slot = self._add_slot(entry, model, keys)
            if entry.size_bytes is None:
                self._fit_measured(entry.name)
        except BaseException as exc:
            if entry.name in self._slots:
                self._evict(entry.name)
            else:
                self._pool.release(entry.name)
            _notify(on_model_load, entry.name, "failed", time.perf_counter() - started)
            if isinstance(exc, ModelError):  # its files cannot make a model (not a cancel, not memory)
                log.error("%s", exc.message)
                self.library.mark_broken(entry.name, exc.message)
            raise
        _notify(on_model_load, entry.name, "finished", time.perf_counter() - started)
        return slot

    def _fit_measured(self, name: str) -> None:
        """A model whose files could not tell its size (a hub id, a ``.ckpt``/``.bin`` pickle: reading a
        pickle's shapes means unpickling it) loads without room made first; once loaded its parts are
        measured, the least recently used others leave until the budget holds, and the library keeps the
        size (later jobs are judged at submit like any other). One too big even alone leaves again and
        its job fails with the same ``ModelTooLarge`` a sized model gets at submit. The price: memory may
        pass the budget while such a model loads the first time."""
        self.library.record_size(name, self._pool.bytes_of(name))
        while len(self._slots) > 1 and self._pool.loaded_bytes > self.budget_bytes:
            self._evict(next(iter(self._slots)))  # the least recently used first; ``name`` is the newest
        message = self._too_large(self.library.model(name))
        if message is not None:
            self._evict(name)
            raise ModelTooLarge(message, field="model")

    def _add_slot(self, entry: ModelEntry, model: LoadedModel, keys: dict[str, str] | None = None) -> ModelSlot:
        self._pool.add(entry.name, model.pipe.components, keys or {})
        if model.family != entry.family:
            self.library.update_family(entry.name, model.family)
        if self._embeddings is None:
            self._embeddings = EmbeddingStore(str(self.library.embeddings_dir) if self.library.embeddings_dir else None)
        slot = build_slot(entry, model, taesd=self._taesd, embeddings=self._embeddings, hashes=self._hashes,
                          fuse_loras=self.fuse_loras, max_cached_loras=self.max_cached_loras, settings=self.settings)
        self._slots[entry.name] = slot
        self._loaded_names = frozenset(self._slots)
        self._step_aside(slot)
        self._last = slot
        return slot

    def _step_aside(self, slot: ModelSlot) -> None:
        """Before ``slot`` runs: the models it shares a text encoder with turn their LoRA adapters in it
        off (peft's layers live in the shared module), so only ``slot``'s own adapters can act."""
        for name in self._pool.sharers(slot.name):
            other = self._slots.get(name)
            if other is not None:
                other.loras.step_aside()

    def _evict(self, name: str) -> None:
        slot = self._slots.pop(name)
        self._loaded_names = frozenset(self._slots)
        if self._last is slot:
            self._last = None
        if self._pool.shared_with(name):
            slot.loras.close()  # its adapters would stay in the shared text encoder
        slot.close()
        del slot
        self._pool.release(name)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        log.info("model %s left memory", name)

    def _finish_load(self, slot: ModelSlot) -> None:
        self._info = EngineInfo(
            model=slot.name,
            family=slot.model.family,
            device=str(slot.model.device),
            dtype=str(slot.model.dtype).removeprefix("torch."),
            schedulers=SCHEDULER_NAMES,
            default_scheduler=describe_scheduler(slot.base_scheduler),
            preview_methods=slot.preview_methods,
        )

    # -- one job --------------------------------------------------------------------------------------

    def _with_controlnet(
        self, slot: ModelSlot, request: GenerationRequest, base: Any, kwargs: dict[str, Any],
        size: tuple[int, int] | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """The job's ControlNet pipeline over ``base``'s modules (``engine.controlnet``); ``size``: the
        hires fix's second pass, whose maps are preprocessed at that size."""
        maps = control_images(request.controlnet, self.settings.max_pixels, size)
        entries = [self.controlnets.entry(unit.model, f"controlnet.{i}.model")
                   for i, unit in enumerate(request.controlnet)]
        nets = [self.controlnets.load(entry, slot.model.device, slot.model.dtype) for entry in entries]
        return controlnet_call(base, slot.model.family, request.operation, entries[0].kind, nets, maps,
                               request.controlnet, kwargs)

    def _common_arguments(
        self, slot: ModelSlot, request: GenerationRequest, prompt: str, seeds: tuple[int, ...]
    ) -> dict[str, Any]:
        """What every UNet pipeline call of a job takes: steps, guidance, the prompt (or the A1111-style
        encoder's embeddings) and fresh CPU generators seeded ``seeds``."""
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        kwargs: dict[str, Any] = {
            "num_inference_steps": request.num_inference_steps,
            "guidance_scale": request.guidance_scale,
            "num_images_per_prompt": request.num_images,
            "generator": generators[0] if len(generators) == 1 else generators,
        }
        if slot.prompts.needs_custom(prompt, request.negative_prompt, request.clip_skip):
            kwargs.update(slot.prompts.encode(prompt, request.negative_prompt, request.clip_skip, slot.model.device))
        else:
            kwargs.update(prompt=prompt, negative_prompt=request.negative_prompt or None)
        return kwargs

    def _call_arguments(
        self,
        slot: ModelSlot,
        request: GenerationRequest,
        prompt: str,
        seeds: tuple[int, ...],
        init: Image.Image | None,
        mask: Image.Image | None,
    ) -> tuple[Any, dict[str, Any]]:
        model = slot.model
        kwargs = self._common_arguments(slot, request, prompt, seeds)
        assert request.width is not None and request.height is not None  # settled in generate
        size = (request.width, request.height)
        image = _resize(init.convert("RGB"), size, Image.Resampling.LANCZOS) if init is not None else None
        if request.operation is not Operation.INPAINT and is_inpainting_unet(model.pipe):
            return model.inpaint, full_mask_arguments(request, kwargs, image)  # A1111's way, see inpainting_unet
        if request.operation is Operation.TEXT_TO_IMAGE:
            return model.text_to_image, {**kwargs, "width": request.width, "height": request.height}
        assert image is not None  # check_request: img2img and inpaint have an init image
        if request.operation is Operation.IMAGE_TO_IMAGE:
            return model.image_to_image, {**kwargs, "image": image, "strength": request.strength}
        assert mask is not None
        return model.inpaint, {
            **kwargs,
            "image": image,
            "mask_image": _resize(mask, size, Image.Resampling.BILINEAR),
            "width": request.width,
            "height": request.height,
            "strength": request.strength,
        }


def default_budget(settings: Settings) -> int:
    """90% of the card's memory (the rest: activations, the CUDA context), or 75% of the RAM on the CPU
    and MPS (the OS, the service and the job's activations share it)."""
    from sdworker.engine.models import resolve_device

    device, _ = resolve_device(settings)
    if device.type == "cuda" and settings.offload == "none":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.9)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 16 * 1024**3
    return int(ram * 0.75)


def batch_hooks(family: str) -> BatchFamily:
    """The shared batch loop's hooks for ``family`` (``batch_unet`` for the UNet families)."""
    return FLOW_BATCH_HOOKS[family] if flow_adapter(family) is not None else UNetBatch()


def _flow_family(entry: ModelEntry) -> str | None:
    return entry.family if flow_adapter(entry.family) is not None else None


def _defaults(entry: ModelEntry) -> tuple[int, float]:
    """The steps and guidance a job on ``entry`` gets when it names none: its family's, per variant."""
    defaults = family_facts(entry.family).defaults_for(entry.variant)
    return defaults.steps, defaults.guidance


def _as_images(pipe: Any, output: Any) -> list[Image.Image]:
    """Pass 1's output as images: decoded the way the pipeline ends when it held latents."""
    return output if isinstance(output, list) else decode_latents(pipe, output)


def _notify(hook: ModelLoadHook | None, name: str, phase: str, seconds: float) -> None:
    if hook is None:
        return
    try:
        hook(name, phase, seconds)
    except Exception:  # a watcher's hook must never fail a load
        log.warning("on_model_load hook failed", exc_info=True)


def _seed(request: GenerationRequest) -> int:
    return request.seed if request.seed is not None else random.randint(0, MAX_SEED)


def _resize(image: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    return image if image.size == size else image.resize(size, resample)

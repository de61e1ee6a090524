"""One loaded model and everything that belongs to it: schedulers, preview decoders, the prompt
encoder and its LoRA adapters. Dropping the slot drops all of it (the engine's LRU evicts slots).

Previews follow the model's family: latent2rgb coefficients per family, and a TAESD per family
(``--taesd [FAMILY=]DIR``: no prefix for SD 1.x/2.x latents, ``flux1=``/``sd3=``... for TAEF1, TAESD3;
``--taesdxl`` for SDXL's; a ``taesd/`` folder inside a diffusers
model folder is used when the flag is not given, which is how the demo models ship theirs).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sdworker.domain.batch_plan import resolve_max_batch
from sdworker.domain.families import family_facts
from sdworker.domain.request import GenerationRequest
from sdworker.domain.result import AppliedLora, GenerationResult
from sdworker.engine.block_compile import CompiledBlocks, apply_block_compile, warm_job
from sdworker.engine.compile import CompiledUnet, apply_compile
from sdworker.engine.embeddings import EmbeddingStore
from sdworker.engine.hashing import HashCache
from sdworker.engine.library import ModelEntry
from sdworker.engine.lora import LoraAdapters
from sdworker.engine.models import LoadedModel
from sdworker.engine.prompt_encoding import PromptEncoder
from sdworker.engine.schedulers import SchedulerFactory
from sdworker.errors import ModelError
from sdworker.previews.decoders import PreviewDecoder, create_decoder, resolve_method
from sdworker.previews.options import PreviewPixels
from sdworker.settings import Settings

log = logging.getLogger(__name__)

PREVIEW_ORDER = ("latent2rgb", "taesd", "vae")
UNET_FAMILIES = frozenset({"sd1", "sd2", "sdxl"})


@dataclass(slots=True)
class ModelSlot:
    entry: ModelEntry
    model: LoadedModel
    base_scheduler: Any
    schedulers: SchedulerFactory
    decoders: dict[str, PreviewDecoder]
    prompts: PromptEncoder
    loras: LoraAdapters
    sha256: str | None
    compiled: CompiledUnet | CompiledBlocks | None = None  # --compile: the UNet's or the blocks' dispatchers
    preview_failed_logged: bool = False

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def short_hash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def preview_methods(self) -> tuple[str, ...]:
        return tuple(m for m in PREVIEW_ORDER if m in self.decoders)

    def render_preview(self, method: str, max_size: int, latents: torch.Tensor, source: str) -> PreviewPixels | None:
        if method == "none":
            return None
        resolved = resolve_method(method, taesd_available="taesd" in self.decoders)
        decoder = self.decoders.get(resolved)
        if decoder is None:
            return None
        try:
            pixels = decoder.decode(latents, max_size)
        except Exception:
            if not self.preview_failed_logged:  # once: a broken decoder would fail every step
                self.preview_failed_logged = True
                log.warning("preview decode with %s failed; previews skipped", resolved, exc_info=True)
            return None
        return PreviewPixels(pixels=pixels, method=decoder.method, source=source)

    def result(
        self,
        request: GenerationRequest,
        images: Sequence[Image.Image],
        seeds: tuple[int, ...],
        scheduler: str,
        steps_run: int,
        seconds: float,
        loras: tuple[AppliedLora, ...],
        warnings: tuple[str, ...] = (),
        size: tuple[int, int] | None = None,
        first_pass_size: tuple[int, int] | None = None,
    ) -> GenerationResult:
        """A finished job's result, with what this model says about itself (name, hash, family).
        ``size``: the images' when it is not the request's (a hires fix's second pass)."""
        assert request.width is not None and request.height is not None  # settled before the run
        width, height = size or (request.width, request.height)
        return GenerationResult(
            images=tuple(images), seeds=seeds, width=width, height=height, scheduler=scheduler,
            steps_run=steps_run, seconds=seconds, model=self.name, model_hash=self.short_hash,
            family=self.model.family, loras=loras, clip_skip=request.clip_skip, warnings=warnings,
            num_inference_steps=request.num_inference_steps, guidance_scale=request.guidance_scale,
            first_pass_size=first_pass_size,
        )

    def close(self) -> None:
        self.decoders.clear()
        release_tokenizers(self.model.pipe)


def release_tokenizers(pipe: Any) -> None:
    """Break the reference cycle each transformers ``CLIPTokenizer`` makes, so its Rust tokenizer (vocab
    and merges) goes with the model by reference counting, not whenever (if ever) the cycle collector
    looks through a pyo3 object.

    ``CLIPTokenizer._wrap_decode_method_backend_tokenizer`` stores a closure over the backend's own bound
    ``decode`` in the backend ``tokenizers.Tokenizer``'s ``__dict__``: backend -> closure -> bound method
    -> backend. The model is leaving, nothing decodes with it any more: dropping the closure restores the
    backend's plain ``decode``. (The soak's measured leak was elsewhere: ``models._fits_read_whole``.)
    """
    for component in pipe.components.values():
        backend = getattr(component, "_tokenizer", None)
        state = getattr(backend, "__dict__", None)
        if isinstance(state, dict):
            state.pop("decode", None)


class TaesdCache:
    """TAESD modules by folder, shared by the slots of one family (a few MB each)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loaded: dict[tuple[str, str], Any] = {}

    def for_model(self, model: LoadedModel) -> Any:
        from sdworker.previews.taesd import load_taesd

        flags = self.settings.taesd_folders()
        path = flags.get(model.family)
        if path is None and model.source.kind == "folder":
            own = Path(model.source.location) / "taesd"
            path = str(own) if (own / "config.json").is_file() else None
        if path is None:
            return None
        key = (path, f"{model.device}/{model.dtype}")
        if key not in self._loaded:
            try:
                self._loaded[key] = load_taesd(path, model.device, model.dtype,
                                               latent_channels=family_facts(model.family).latent.channels)
            except ModelError:
                if path in flags.values():
                    raise  # a flag the user gave: say so
                log.warning("TAESD in %s unusable; previews fall back to latent2rgb", path, exc_info=True)
                self._loaded[key] = None
        return self._loaded[key]


def build_slot(
    entry: ModelEntry,
    model: LoadedModel,
    *,
    taesd: TaesdCache,
    embeddings: EmbeddingStore | None,
    hashes: HashCache,
    fuse_loras: bool = False,
    max_cached_loras: int = 8,
    settings: Settings | None = None,
) -> ModelSlot:
    """The slot of a freshly loaded model. ``settings`` carries ``--compile`` and its sizes (None: eager)."""
    base_scheduler = model.pipe.scheduler
    tiny = taesd.for_model(model)
    decoders: dict[str, PreviewDecoder] = {}
    from sdworker.engine.families import flow_adapter

    adapter = flow_adapter(model.family)
    own = adapter.preview_decoders(model.pipe.vae) if adapter is not None else {}
    for method in ("latent2rgb", "vae", *(["taesd"] if tiny is not None else [])):
        if method in own:
            decoders[method] = own[method]
            continue
        try:
            decoders[method] = create_decoder(method, latent2rgb=family_facts(model.family).latent.coefficients,
                                             vae=model.pipe.vae, taesd=tiny)
        except (KeyError, ValueError) as exc:
            log.warning("preview method %s unavailable: %s", method, exc)
    sha256 = None
    if entry.hash_file is not None:
        try:
            sha256 = hashes.get(entry.hash_file)
        except OSError as exc:
            log.warning("cannot hash %s: %s", entry.hash_file, exc)
    loras = LoraAdapters(model.pipe, entry.name, hashes, max_cached=max_cached_loras, fuse=fuse_loras)
    compiled: CompiledUnet | CompiledBlocks | None = None
    if settings is not None and settings.compile and model.family in UNET_FAMILIES:
        # After the LoRA loader exists, before any job: the compiled graph must see a UNet without adapters.
        max_batch = resolve_max_batch(settings.max_batch, str(model.device))
        compiled = apply_compile(model.text_to_image, sizes=settings.compile_sizes, max_batch=max_batch,
                                 cache_dir=settings.cache_dir, allowed=lambda: loras.unet_is_base)
    elif settings is not None and settings.compile and adapter is not None and model.text_to_image is not None:
        warm = warm_job(adapter, model, family_facts(model.family).defaults_for(entry.variant).guidance)
        compiled = apply_block_compile(model.text_to_image, sizes=settings.compile_sizes, warm=warm,
                                       cache_dir=settings.cache_dir, allowed=lambda: loras.unet_is_base)
    return ModelSlot(
        entry=entry,
        model=model,
        base_scheduler=base_scheduler,
        schedulers=SchedulerFactory(base_scheduler),
        decoders=decoders,
        prompts=PromptEncoder(model.pipe, model.family, embeddings),
        loras=loras,
        sha256=sha256,
        compiled=compiled,
    )

"""The diffusers engine: text-to-image, image-to-image and inpainting over one set of loaded weights.

``DiffusersEngine(settings)`` is cheap; ``load()`` does the slow work. Each job gets a fresh scheduler
(see ``schedulers``), CPU generators seeded ``seed, seed + 1, ...`` (so results equal diffusers' own
pipeline called with ``torch.Generator("cpu").manual_seed(seed)``, on any device), and one step
callback (``step_hook.StepCallback``: progress, previews, cancellation - its module docstring says how
cancel stops the pipeline and why).
"""

from __future__ import annotations

import gc
import logging
import random
import time
from typing import Any

import torch
from PIL import Image

from sdworker.engine.models import LoadedModel, ModelSource, build_pipelines, detect_family, load_model
from sdworker.engine.protocol import (
    CancelToken,
    EngineInfo,
    GenerationRequest,
    GenerationResult,
    Operation,
    StepHook,
)
from sdworker.engine.scheduler_names import SCHEDULER_NAMES
from sdworker.engine.schedulers import SchedulerFactory, describe_scheduler
from sdworker.engine.step_hook import Interrupted, StepCallback
from sdworker.engine.x0 import X0Recorder
from sdworker.errors import GenerationFailed, InvalidRequest, JobCancelled, NotReady, SdworkerError
from sdworker.imaging.decode import check_mask_matches
from sdworker.previews.decoders import PreviewDecoder, create_decoder, resolve_method
from sdworker.previews.options import PreviewPixels
from sdworker.settings import Settings

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1


class DiffusersEngine:
    """The ``Engine`` protocol over diffusers. One caller thread at a time (the runner's GPU thread)."""

    def __init__(self, settings: Settings, *, model_name: str | None = None) -> None:
        self.settings = settings
        self.model_name = model_name or settings.model
        self._model: LoadedModel | None = None
        self._info: EngineInfo | None = None
        self._base_scheduler: Any = None
        self._schedulers: SchedulerFactory | None = None
        self._decoders: dict[str, PreviewDecoder] = {}
        self._taesd: Any = None
        self._preview_failed_logged = False

    @classmethod
    def from_pipeline(cls, pipe: Any, settings: Settings, model_name: str = "memory") -> DiffusersEngine:
        """An engine over a pipeline built in memory (benchmarks), on the pipeline's device and dtype."""
        engine = cls(settings, model_name=model_name)
        device, dtype = pipe.device, pipe.unet.dtype
        model = build_pipelines(pipe, detect_family(pipe), device, dtype, ModelSource("memory", model_name))
        engine._finish_load(model)
        return engine

    # -- Engine protocol ------------------------------------------------------------------------------

    def load(self) -> None:
        if self._model is None:
            self._finish_load(load_model(self.settings))

    @property
    def info(self) -> EngineInfo:
        if self._info is None:
            raise NotReady("the model is not loaded yet")
        return self._info

    @property
    def model(self) -> LoadedModel:
        if self._model is None:
            raise NotReady("the model is not loaded yet")
        return self._model

    def generate(
        self,
        request: GenerationRequest,
        on_step: StepHook | None = None,
        cancel: CancelToken | None = None,
    ) -> GenerationResult:
        model = self.model
        assert self._schedulers is not None  # set with the model
        _validate(request)
        if cancel is not None:
            cancel.raise_if_cancelled()
        scheduler, scheduler_name = self._schedulers.create(request.scheduler)
        seed = request.seed if request.seed is not None else random.randint(0, MAX_SEED)
        seeds = tuple(seed + i for i in range(request.num_images))
        pipe, kwargs = self._call_arguments(model, request, seeds)
        recorder = X0Recorder(scheduler)
        callback = StepCallback(on_step, cancel, recorder, self._render_preview)
        started = time.perf_counter()
        pipe.scheduler = scheduler
        completed = False
        steps_run: int | None = None
        try:
            try:
                images = pipe(**kwargs, callback_on_step_end=callback, output_type="pil").images
            except Interrupted as stop:  # A1111's interrupt: finish with the latents we have
                images, steps_run = _decode_latents(pipe, stop.latents), stop.steps_done
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
            recorder.close()
            pipe.scheduler = self._base_scheduler  # nothing keeps the job's scheduler (and its tensors)
            del callback
            # After a cancel or a failure, hand the unwound job's cached blocks back to the driver. Not after
            # a normal job: the next job would pay cudaMalloc again for the same blocks.
            if not completed and model.device.type == "cuda":
                gc.collect()
                torch.cuda.empty_cache()
        return GenerationResult(
            images=tuple(images),
            seeds=seeds,
            width=request.width,
            height=request.height,
            scheduler=scheduler_name,
            steps_run=steps_run or int(getattr(pipe, "_num_timesteps", request.num_inference_steps)),
            seconds=time.perf_counter() - started,
        )

    def close(self) -> None:
        self._model = None
        self._decoders.clear()
        self._taesd = None
        self._base_scheduler = None
        self._schedulers = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # -- loading --------------------------------------------------------------------------------------

    def _finish_load(self, model: LoadedModel) -> None:
        self._model = model
        self._base_scheduler = model.text_to_image.scheduler
        self._schedulers = SchedulerFactory(self._base_scheduler)
        self._taesd = self._load_taesd(model)
        methods = ["latent2rgb", "vae"] + (["taesd"] if self._taesd is not None else [])
        for method in methods:
            try:
                self._decoders[method] = create_decoder(
                    method, family=model.family, vae=model.text_to_image.vae, taesd=self._taesd
                )
            except (KeyError, ValueError) as exc:
                log.warning("preview method %s unavailable: %s", method, exc)
        self._info = EngineInfo(
            model=self.model_name,
            family=model.family,
            device=str(model.device),
            dtype=str(model.dtype).removeprefix("torch."),
            schedulers=SCHEDULER_NAMES,
            default_scheduler=describe_scheduler(self._base_scheduler),
            preview_methods=tuple(m for m in ("latent2rgb", "taesd", "vae") if m in self._decoders),
        )

    def _load_taesd(self, model: LoadedModel) -> Any:
        from pathlib import Path

        from sdworker.engine.demo_model import TAESD_DIR
        from sdworker.previews.taesd import load_taesd

        path = self.settings.taesd
        if path is None and model.source.is_demo:
            path = str(Path(model.source.location) / TAESD_DIR)
        if path is None:
            return None
        return load_taesd(path, model.device, model.dtype)

    # -- one job --------------------------------------------------------------------------------------

    def _call_arguments(
        self, model: LoadedModel, request: GenerationRequest, seeds: tuple[int, ...]
    ) -> tuple[Any, dict[str, Any]]:
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        kwargs: dict[str, Any] = {
            "prompt": request.prompt,
            "negative_prompt": request.negative_prompt or None,
            "num_inference_steps": request.num_inference_steps,
            "guidance_scale": request.guidance_scale,
            "num_images_per_prompt": request.num_images,
            "generator": generators[0] if len(generators) == 1 else generators,
        }
        size = (request.width, request.height)
        if request.operation is Operation.TEXT_TO_IMAGE:
            return model.text_to_image, {**kwargs, "width": request.width, "height": request.height}
        assert request.init_image is not None  # _validate checked
        image = _resize(request.init_image.convert("RGB"), size, Image.Resampling.LANCZOS)
        if request.operation is Operation.IMAGE_TO_IMAGE:
            return model.image_to_image, {**kwargs, "image": image, "strength": request.strength}
        assert request.mask_image is not None
        mask = _resize(request.mask_image.convert("L"), size, Image.Resampling.BILINEAR)
        return model.inpaint, {
            **kwargs,
            "image": image,
            "mask_image": mask,
            "width": request.width,
            "height": request.height,
            "strength": request.strength,
        }

    def _render_preview(self, method: str, max_size: int, latents: torch.Tensor, source: str) -> PreviewPixels | None:
        if method == "none":
            return None
        resolved = resolve_method(method, taesd_available=self._taesd is not None)
        decoder = self._decoders.get(resolved)
        if decoder is None:
            return None
        try:
            pixels = decoder.decode(latents, max_size)
        except Exception:
            if not self._preview_failed_logged:  # once: a broken decoder would fail every step
                self._preview_failed_logged = True
                log.warning("preview decode with %s failed; previews skipped", resolved, exc_info=True)
            return None
        return PreviewPixels(pixels=pixels, method=decoder.method, source=source)


def _decode_latents(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    """What the pipeline's own end does with its final latents, for an interrupted job's latents."""
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and bool(getattr(vae.config, "force_upcast", False))
    with torch.no_grad():
        if upcast:  # SDXL's VAE overflows in float16; its pipeline decodes in float32 too
            vae.to(torch.float32)
        try:
            scaled = latents.to(device=vae.device, dtype=vae.dtype) / vae.config.scaling_factor
            pixels = vae.decode(scaled, return_dict=False)[0]
        finally:
            if upcast:
                vae.to(torch.float16)
    images: list[Image.Image] = pipe.image_processor.postprocess(pixels, output_type="pil")
    return images


def _validate(request: GenerationRequest) -> None:
    """Checks the engine needs whoever the caller is (the API validates earlier, with its own limits)."""
    for name, value in (("width", request.width), ("height", request.height)):
        if value < 8 or value % 8:
            raise InvalidRequest(f"{name}: {value} is not a positive multiple of 8", field=name)
    if request.num_inference_steps < 1:
        raise InvalidRequest(f"steps: {request.num_inference_steps} is below 1", field="steps")
    if request.num_images < 1:
        raise InvalidRequest(f"num_images: {request.num_images} is below 1", field="num_images")
    if request.operation is Operation.TEXT_TO_IMAGE:
        return
    if request.init_image is None:
        raise InvalidRequest(f"init_image: {request.operation.value} needs an init image", field="init_image")
    if not 0.0 < request.strength <= 1.0:
        raise InvalidRequest(f"strength: {request.strength} is not in (0, 1]", field="strength")
    if int(request.num_inference_steps * request.strength) < 1:
        raise InvalidRequest(
            f"strength: {request.strength} x {request.num_inference_steps} steps leaves no step to run",
            field="strength",
        )
    if request.operation is Operation.INPAINT:
        if request.mask_image is None:
            raise InvalidRequest("mask_image: inpainting needs a mask image (white = repaint)", field="mask_image")
        check_mask_matches(request.init_image, request.mask_image)


def _resize(image: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    return image if image.size == size else image.resize(size, resample)

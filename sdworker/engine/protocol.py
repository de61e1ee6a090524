"""The contract between the job runner and whatever generates images.

The runner calls ``Engine.load()`` once and then ``Engine.generate()`` for one job at a time, always on
the one thread it owns for GPU work. During ``generate`` the engine calls ``on_step`` once per
denoising step, on that same thread, with a ``StepView``; the hook may ask the view for a preview
(decoded on that thread, because it touches the model) and must return quickly: anything slow (image
encoding, network) belongs to other threads. Cancellation is cooperative through ``CancelToken``: the
engine checks it after every step and stops by raising ``JobCancelled`` (see the diffusers engine for
why raising is the right way to leave a diffusers pipeline).

No torch here: latents are typed ``Any`` so the job layer can import this module without torch.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Protocol

from sdworker.errors import JobCancelled

if TYPE_CHECKING:
    from PIL import Image

    from sdworker.previews.options import PreviewPixels


@dataclass(frozen=True, slots=True)
class LoraRef:
    """A LoRA to apply to one job: a name in the LoRA folder (with or without ``.safetensors``) and its
    weight (1.0 = as trained; negative values invert it, as in A1111)."""

    name: str
    weight: float = 1.0


class Operation(StrEnum):
    """What a job does. Values are the wire names of the reference design (snake_case form)."""

    TEXT_TO_IMAGE = "image_generation"
    IMAGE_TO_IMAGE = "image_transform"
    INPAINT = "image_inpaint"


@dataclass(frozen=True, slots=True)
class GenerationRequest:
    """One generation, already validated. Parameter names follow diffusers'.

    ``width``/``height`` are the output size (multiples of 8). For image-to-image and inpainting the
    init image (and mask) are resized to that size when they differ. ``mask_image``: white = repaint.
    ``seed`` None means "pick one"; the engine reports the seed it used. With ``num_images`` > 1,
    image i uses seed ``seed + i`` so any one of them can be made again alone.
    """

    prompt: str
    operation: Operation = Operation.TEXT_TO_IMAGE
    negative_prompt: str = ""
    num_inference_steps: int = 20
    guidance_scale: float = 7.5
    width: int = 512
    height: int = 512
    seed: int | None = None
    scheduler: str | None = None  # None = the model's own
    num_images: int = 1
    init_image: Image.Image | None = None
    mask_image: Image.Image | None = None
    strength: float = 0.8
    model: str | None = None  # a name from the model library; None = the default model
    loras: tuple[LoraRef, ...] = ()  # merged with the prompt's <lora:name:w> tags; these weights win
    clip_skip: int | None = None  # A1111's convention: 1 = the last layer (no skip), 2 = the penultimate


@dataclass(frozen=True, slots=True)
class AppliedLora:
    """A LoRA that ran, for the PNG text: name, weight and A1111's short hash (12 hex characters)."""

    name: str
    weight: float
    short_hash: str | None


@dataclass(frozen=True, slots=True)
class GenerationResult:
    images: tuple[Image.Image, ...]
    seeds: tuple[int, ...]  # one per image
    width: int
    height: int
    scheduler: str  # the name actually used
    steps_run: int  # denoising steps actually run (fewer than requested for img2img/inpaint)
    seconds: float
    model: str = ""  # the library name of the model that ran
    model_hash: str | None = None  # A1111's short model hash (10 hex characters)
    family: str = "sd1"  # sd1 | sd2 | sdxl: which preview coefficients / TAESD fit its latents
    loras: tuple[AppliedLora, ...] = ()
    clip_skip: int | None = None

    @property
    def seed(self) -> int:
        return self.seeds[0]


@dataclass(frozen=True, slots=True)
class EngineInfo:
    model: str  # what the user named (path, hub id or "demo")
    family: str  # sd1 | sd2 | sdxl
    device: str
    dtype: str
    schedulers: tuple[str, ...]
    default_scheduler: str
    preview_methods: tuple[str, ...]  # decoders available here (subset of latent2rgb, taesd, vae)
    operations: tuple[Operation, ...] = tuple(Operation)


class StepView(Protocol):
    """What the step hook sees after denoising step ``step`` (1-based) of ``total``."""

    @property
    def step(self) -> int: ...

    @property
    def total(self) -> int: ...

    def latents(self) -> Any:
        """The latents as the loop holds them after this step (a torch tensor, batch first)."""
        ...

    def predicted_x0(self) -> Any | None:
        """The model's current guess of the final latents, or None where it cannot be had."""
        ...

    def render_preview(self, method: str, max_size: int) -> PreviewPixels | None:
        """Decode a small preview of the first image (predicted x0 where available, else latents).

        ``method`` is one of ``auto``, ``latent2rgb``, ``taesd``, ``vae``. Runs on the calling (GPU)
        thread; returns None if the method is unavailable or decoding failed (a preview is never
        worth failing a job for).
        """
        ...


StepHook = Callable[[StepView], None]


@dataclass(frozen=True, slots=True)
class BatchItem:
    """One job of a cross-job batch (``Engine.generate_batch``): its request, its own step hook (its
    progress and previews) and its own cancel token (cancelling it leaves the others running)."""

    request: GenerationRequest
    on_step: StepHook | None = None
    cancel: CancelToken | None = None


# on_model_load(name, phase, seconds): phase "started" (seconds 0.0) then "finished" (seconds the load
# took) or "failed". Called on the engine's thread; must return quickly (hand over to the event loop).
ModelLoadHook = Callable[[str, str, float], None]


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """One model of the library. ``kind``: folder (diffusers) | file (single .safetensors checkpoint).

    ``sha256`` is the checkpoint file's (for a folder, its UNet weights file's) and ``short_hash`` its
    first 10 characters, A1111's "Model hash"; both None until computed (at the model's first load, then
    cached on disk by path, size and modification time). ``native_size``: the side the model was trained
    at (512 SD 1.x, 768 SD 2.x v-models, 1024 SDXL; a diffusers folder says its own), the default size.
    """

    name: str
    family: str
    kind: str
    path: str
    native_size: int
    loaded: bool = False
    is_default: bool = False
    sha256: str | None = None

    @property
    def short_hash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None


@dataclass(frozen=True, slots=True)
class LoraInfo:
    """One LoRA of the library. ``family`` (sd1 | sd2 | sdxl) when its shapes tell, else None."""

    name: str
    path: str
    family: str | None
    format: str  # peft (diffusers) | kohya | unknown


class CancelToken:
    """Set from any thread; read by the engine after every denoising step.

    Two ways to stop: ``cancel`` (the job ends with no image) and ``interrupt`` (A1111's: stop at the
    next step and finish with what the latents hold now; an engine that cannot, cancels). Either one
    makes ``cancelled`` true, so an engine that only knows cancel still stops.
    """

    __slots__ = ("_event", "_interrupt")

    def __init__(self) -> None:
        self._event = threading.Event()
        self._interrupt = False

    def cancel(self) -> None:
        self._event.set()

    def interrupt(self) -> None:
        self._interrupt = True
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    @property
    def interrupted(self) -> bool:
        return self._interrupt and self._event.is_set()

    def raise_if_cancelled(self) -> None:
        if self._event.is_set():
            raise JobCancelled("the job was cancelled")


class Engine(Protocol):
    """Generates images. Not thread-safe: one caller thread (the runner's GPU thread) at a time."""

    def load(self) -> None:
        """Load weights (slow). Raises ``ModelError`` with a one-line message when it cannot."""
        ...

    @property
    def info(self) -> EngineInfo:
        """Valid after ``load``."""
        ...

    def generate(
        self,
        request: GenerationRequest,
        on_step: StepHook | None = None,
        cancel: CancelToken | None = None,
        on_model_load: ModelLoadHook | None = None,
    ) -> GenerationResult:
        """Run one generation. Raises ``JobCancelled`` when ``cancel`` is set (checked every step); when
        it was *interrupted* (``CancelToken.interrupt``) returns a normal result from the latents it has,
        ``InvalidRequest`` subclasses for requests this model cannot serve (e.g. unknown scheduler),
        ``GenerationFailed`` for anything else with a message safe to show. When ``request.model`` is
        not in memory it is loaded first (``on_model_load`` hears when that starts and ends)."""
        ...

    def generate_batch(
        self, items: Sequence[BatchItem], on_model_load: ModelLoadHook | None = None
    ) -> list[GenerationResult | Exception]:
        """Run several jobs, sharing one UNet call per step where they can (same model, size, step
        count and scheduler, text-to-image, no LoRA); the others run one after another. Each job keeps
        its own generator (its pixels equal its solo ``generate``), its own hook and its own cancel:
        the returned list holds, per item and in order, its result or the exception ``generate``
        would have raised for it (``JobCancelled``, ``InvalidRequest``, ``GenerationFailed``)."""
        ...

    def close(self) -> None:
        """Free what the engine holds (GPU memory)."""
        ...

    # The model library. Unlike ``generate``, these may be called from any thread (the API's) while a
    # job runs: they read files' names and headers, never weights.

    def list_models(self) -> tuple[ModelInfo, ...]:
        """Every model the worker can serve, the default and the ones in memory marked."""
        ...

    def list_loras(self) -> tuple[LoraInfo, ...]:
        """Every LoRA in the LoRA folder."""
        ...

    def refresh(self) -> None:
        """Rescan the models (and embeddings) folders."""
        ...

    def validate_request(self, request: GenerationRequest) -> None:
        """Refuse at submit time what ``generate`` would refuse about the model and LoRAs (names from
        ``request.loras`` and the prompt's ``<lora:...>`` tags): ``ModelNotFound`` (404, field
        ``model``), ``LoraNotFound`` (404), ``LoraIncompatible``, ``UnsafeCheckpoint``,
        ``InvalidRequest`` (4xx, field ``loras`` or ``prompt``). Loads nothing."""
        ...

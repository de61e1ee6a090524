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

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sdworker.domain.catalog import EngineInfo, LoraInfo, ModelInfo
from sdworker.domain.control import CancelToken
from sdworker.domain.prompt_length import PromptTokenizer
from sdworker.domain.request import GenerationRequest
from sdworker.domain.result import GenerationResult

if TYPE_CHECKING:
    from sdworker.previews.options import PreviewPixels


class StepView(Protocol):
    """What the step hook sees after denoising step ``step`` (1-based) of ``total``."""

    @property
    def step(self) -> int: ...

    @property
    def total(self) -> int: ...

    @property
    def pass_number(self) -> int:
        """1, or 2 in a hires fix's second pass; ``step`` and ``total`` count both passes as one job."""
        ...

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

    @property
    def loaded_bytes(self) -> int:
        """Bytes of model weights in memory now (``/metrics``); read from any thread."""
        ...

    # The model library. Unlike ``generate``, these may be called from any thread (the API's) while a
    # job runs: they read files' names and headers, never weights.

    def list_models(self) -> tuple[ModelInfo, ...]:
        """Every model the worker can serve, the default and the ones in memory marked."""
        ...

    def list_loras(self) -> tuple[LoraInfo, ...]:
        """Every LoRA in the LoRA folder."""
        ...

    def list_controlnets(self) -> tuple[str, ...]:
        """The ControlNet models a job's units may name."""
        ...

    def list_upscalers(self) -> tuple[str, ...]:
        """The upscaler models a hires fix may name (beside the built-in latent and PIL upscalers)."""
        ...

    def list_ip_adapters(self) -> tuple[str, ...]:
        """The IP-Adapters a job's ``ip_adapter.model`` may name (``--ip-adapter-dir``)."""
        ...

    def refresh(self) -> None:
        """Rescan the models (and embeddings) folders."""
        ...

    def prompt_tokenizers(self) -> dict[str, tuple[PromptTokenizer, str]]:
        """Model name -> how its prompts are counted and its tokenizer's JSON (``domain.prompt_length``),
        for the models whose family limits prompt length: what a fleet worker registers."""
        ...

    def validate_request(self, request: GenerationRequest) -> None:
        """Refuse at submit time what ``generate`` would refuse about the model and LoRAs (names from
        ``request.loras`` and the prompt's ``<lora:...>`` tags): ``ModelNotFound`` (404, field
        ``model``), ``LoraNotFound`` (404), ``LoraIncompatible``, ``UnsafeCheckpoint``,
        ``InvalidRequest`` (4xx, field ``loras`` or ``prompt``), ``ModelTooLarge`` (a model bigger than the
        memory budget even alone, field ``model``). Loads nothing."""
        ...

"""A fake engine for API and job tests: the real ``Engine`` protocol without torch (numpy + Pillow).

Deterministic images from the seed, previews whose pixels change every step, cooperative
cancellation checked after every step, and knobs for what tests need: a slow step, a slow or failing
load, a failure at a given step, and a count of ``render_preview`` calls (to prove that nobody
watching means no preview decoding)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from sdworker.domain.catalog import EngineInfo, LoraInfo, ModelInfo
from sdworker.domain.checks import check_strength
from sdworker.domain.control import CancelToken
from sdworker.domain.prompt_length import PromptTokenizer
from sdworker.domain.prompt_syntax import extract_lora_tags, merge_loras
from sdworker.domain.request import GenerationRequest, settle_defaults, settle_size
from sdworker.domain.result import AppliedLora, GenerationResult
from sdworker.engine.protocol import BatchItem, ModelLoadHook, StepHook
from sdworker.errors import GenerationFailed, LoraNotFound, ModelError, ModelNotFound, UnknownScheduler
from sdworker.previews.options import PreviewPixels


class GenerationThreadDied(BaseException):
    """What the fake engine raises to stand for a dying generation thread: not an ``Exception``, so
    only the runner's last-resort handler sees it."""


FAKE_SCHEDULERS = ("euler", "euler_a", "ddim", "dpmpp_2m")
FAKE_NATIVE_SIZE = 512
FAKE_DEFAULTS = (20, 7.5)  # steps and guidance of a job that names none (SD 1.x's, as the fake models)


class _FakeStepView:
    def __init__(self, engine: FakeEngine, seed: int, step: int, total: int, width: int, height: int) -> None:
        self._engine = engine
        self._seed = seed
        self._step = step
        self._total = total
        self._width = width
        self._height = height

    @property
    def step(self) -> int:
        return self._step

    @property
    def total(self) -> int:
        return self._total

    @property
    def pass_number(self) -> int:
        return 1

    def latents(self) -> Any:
        return np.full((1, 4, self._height // 8, self._width // 8), self._step / self._total, dtype=np.float32)

    def predicted_x0(self) -> Any | None:
        return None

    def render_preview(self, method: str, max_size: int) -> PreviewPixels | None:
        with self._engine._lock:
            self._engine.render_preview_calls += 1
        resolved = "latent2rgb" if method == "auto" else method
        if resolved not in self._engine.preview_methods:
            return None
        if self._engine.preview_delay_seconds:
            time.sleep(self._engine.preview_delay_seconds)
        scale = min(1.0, max_size / max(self._width, self._height))
        width, height = max(1, round(self._width * scale)), max(1, round(self._height * scale))
        # The final image faded in from grey as the steps go by: pixels differ at every step.
        final = _image_pixels(self._seed, width, height).astype(np.float32)
        mix = self._step / self._total
        pixels = (128.0 * (1.0 - mix) + final * mix).astype(np.uint8)
        return PreviewPixels(pixels=pixels, method=resolved, source="latents")


def _image_pixels(seed: int, width: int, height: int) -> np.ndarray[Any, np.dtype[np.uint8]]:
    """A smooth seeded pattern (compresses like a picture, unlike noise)."""
    rng = np.random.default_rng(seed)
    fx, fy, phase = rng.uniform(0.5, 4.0), rng.uniform(0.5, 4.0), rng.uniform(0, 2 * np.pi, size=3)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = x / max(width, 1), y / max(height, 1)
    channels = [np.sin(2 * np.pi * (fx * u + fy * v) + p) for p in phase]
    return ((np.stack(channels, axis=-1) + 1.0) * 127.5).astype(np.uint8)


class FakeEngine:
    def __init__(
        self,
        *,
        step_seconds: float = 0.0,
        fail_at_step: int | None = None,
        load_seconds: float = 0.0,
        load_error: str | None = None,
        preview_methods: tuple[str, ...] = ("latent2rgb", "vae"),
        preview_delay_seconds: float = 0.0,
        model: str = "fake",
        load_gate: threading.Event | None = None,
        models: tuple[str, ...] = (),
        loras: tuple[str, ...] = (),
        model_load_seconds: float = 0.0,
        fatal_at_step: int | None = None,
        stuck_at_step: int | None = None,
    ) -> None:
        """``models``: more model names in the fake library (``model`` is the default and first);
        ``loras``: LoRA names it knows; ``model_load_seconds``: how long switching models takes;
        ``fatal_at_step``: the generation thread dies there (``GenerationThreadDied``, a
        BaseException, as a CUDA fatal or an interpreter-level error would escape every ``except
        Exception``); ``stuck_at_step``: the step blocks until ``unstick`` is set (a hung kernel)."""
        self.step_seconds = step_seconds
        self.fail_at_step = fail_at_step
        self.load_seconds = load_seconds
        self.load_error = load_error
        self.preview_methods = preview_methods
        self.preview_delay_seconds = preview_delay_seconds
        self.model = model
        self.load_gate = load_gate  # load() waits for it: tests queue jobs "while the model loads"
        self.model_names = (model, *(m for m in models if m != model))
        self.lora_names = loras
        self.model_load_seconds = model_load_seconds
        self.current_model = model
        self.loaded = False
        self.closed = False
        self.render_preview_calls = 0
        self.generate_calls = 0
        self.batches: list[tuple[str, ...]] = []  # the prompts of each generate_batch call
        self.fatal_at_step = fatal_at_step
        self.stuck_at_step = stuck_at_step
        self.unstick = threading.Event()
        self._lock = threading.Lock()

    def load(self) -> None:
        if self.load_gate is not None:
            self.load_gate.wait(timeout=30)
        if self.load_seconds:
            time.sleep(self.load_seconds)
        if self.load_error is not None:
            raise ModelError(self.load_error)
        self.loaded = True

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            model=self.model,
            family="sd1",
            device="cpu",
            dtype="float32",
            schedulers=FAKE_SCHEDULERS,
            default_scheduler=FAKE_SCHEDULERS[0],
            preview_methods=self.preview_methods,
        )

    def list_models(self) -> tuple[ModelInfo, ...]:
        return tuple(
            ModelInfo(name, "sd1", "folder", f"/fake/{name}", FAKE_NATIVE_SIZE, loaded=name == self.current_model,
                      is_default=name == self.model, sha256=f"{i:02d}" * 32)
            for i, name in enumerate(self.model_names)
        )

    # The demo bundle's guidance names, listed (a Redis API node checks a job's names against them) but
    # never loaded: the fake runs no ControlNet or adapter.
    def list_controlnets(self) -> tuple[str, ...]:
        return ("demo-controlnet",)

    def list_upscalers(self) -> tuple[str, ...]:
        return ()

    def list_ip_adapters(self) -> tuple[str, ...]:
        return ("demo-ip-adapter",)

    def list_loras(self) -> tuple[LoraInfo, ...]:
        return tuple(LoraInfo(name, f"/fake/loras/{name}.safetensors", "sd1", "peft") for name in self.lora_names)

    def refresh(self) -> None:
        pass

    def prompt_tokenizers(self) -> dict[str, tuple[PromptTokenizer, str]]:
        return {}  # the fake's family (sd1) has no prompt limit

    def validate_request(self, request: GenerationRequest) -> None:
        request = settle_defaults(request, *FAKE_DEFAULTS)
        check_strength(request.operation, request.strength, request.num_inference_steps)
        if request.model is not None and request.model not in self.model_names:
            raise ModelNotFound(f"model: no model named {request.model!r}", field="model")
        _, tags = extract_lora_tags(request.prompt)
        from_field = {r.name for r in merge_loras(request.loras, ())}
        for ref in merge_loras(request.loras, tags):
            if ref.name not in self.lora_names:
                field = "loras" if ref.name in from_field else "prompt"  # as the diffusers engine says
                raise LoraNotFound(f"{field}: no LoRA named {ref.name!r}", field=field)

    def generate(
        self,
        request: GenerationRequest,
        on_step: StepHook | None = None,
        cancel: CancelToken | None = None,
        on_model_load: ModelLoadHook | None = None,
    ) -> GenerationResult:
        if not self.loaded:
            raise GenerationFailed("the engine is not loaded")
        self.validate_request(request)
        wanted = request.model or self.model
        if wanted != self.current_model:
            if on_model_load is not None:
                on_model_load(wanted, "started", 0.0)
            time.sleep(self.model_load_seconds)
            self.current_model = wanted
            if on_model_load is not None:
                on_model_load(wanted, "finished", self.model_load_seconds)
        if request.scheduler is not None and request.scheduler not in FAKE_SCHEDULERS:
            raise UnknownScheduler(f"unknown scheduler {request.scheduler!r}", field="scheduler")
        self.generate_calls += 1
        started = time.perf_counter()
        request = settle_defaults(settle_size(request, FAKE_NATIVE_SIZE), *FAKE_DEFAULTS)
        assert request.width is not None and request.height is not None
        assert request.num_inference_steps is not None
        seed = request.seed if request.seed is not None else int(np.random.default_rng().integers(0, 2**32))
        total = request.num_inference_steps
        if request.init_image is not None:
            total = max(1, int(request.num_inference_steps * request.strength))
        for step in range(1, total + 1):
            if self.step_seconds:
                time.sleep(self.step_seconds)
            if self.fail_at_step == step:
                raise GenerationFailed(f"the fake engine failed at step {step}")
            if self.fatal_at_step == step:
                raise GenerationThreadDied(f"the fake engine's thread died at step {step}")
            if self.stuck_at_step == step:
                self.unstick.wait()
            if on_step is not None:
                on_step(_FakeStepView(self, seed, step, total, request.width, request.height))
            if cancel is not None and cancel.interrupted:
                total = step  # A1111's interrupt: finish with what we have
                break
            if cancel is not None:
                cancel.raise_if_cancelled()
        seeds = tuple(seed + i for i in range(request.num_images))
        images = tuple(
            Image.fromarray(_image_pixels(s, request.width, request.height), mode="RGB") for s in seeds
        )
        return GenerationResult(
            images=images,
            seeds=seeds,
            width=request.width,
            height=request.height,
            scheduler=request.scheduler or FAKE_SCHEDULERS[0],
            steps_run=total,
            seconds=time.perf_counter() - started,
            model=wanted,
            loras=tuple(AppliedLora(r.name, r.weight, "0" * 12) for r in merge_loras(request.loras, ())),
            clip_skip=request.clip_skip,
        )

    def generate_batch(
        self, items: Sequence[BatchItem], on_model_load: ModelLoadHook | None = None
    ) -> list[GenerationResult | Exception]:
        """The jobs one after another (nothing to share without a UNet), each outcome caught as the
        protocol says; ``batches`` records what the runner handed over together."""
        self.batches.append(tuple(item.request.prompt for item in items))
        outcomes: list[GenerationResult | Exception] = []
        for item in items:
            try:
                outcomes.append(self.generate(item.request, item.on_step, item.cancel, on_model_load))
            except Exception as exc:
                outcomes.append(exc)
        return outcomes

    @property
    def loaded_bytes(self) -> int:
        """A fake model weighs nothing; the figure is 1 MiB per loaded model, so ``/metrics`` shows one."""
        return 0 if self.closed else 1024 * 1024

    def close(self) -> None:
        self.closed = True

"""What a worker serves: its engine, its models and LoRAs, as the API lists them. Torch-free."""

from __future__ import annotations

from dataclasses import dataclass

from sdworker.domain.prompt_length import PromptTokenizer
from sdworker.domain.request import Operation


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
    variant: str = ""  # within a family (FLUX.1 dev | schnell...), what picks its defaults
    default_steps: int = 20  # the family's (``sdworker.domain.families``): a job's steps when it names none
    default_guidance: float = 7.5
    size_multiple: int = 8
    size_bytes: int | None = None  # its weights once loaded, from the safetensors headers (None: unknown)
    too_large: str | None = None  # why this worker cannot load it even alone (over its --max-loaded-bytes)
    error: str | None = None  # why it cannot be used at all (unreadable files, or its load failed): listed, never run
    prompt_tokenizer: PromptTokenizer | None = None  # how a fleet worker's API nodes count its prompts

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

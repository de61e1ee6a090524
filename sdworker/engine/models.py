"""Find and load a model: ``demo``, a diffusers folder, a single ``.safetensors`` checkpoint, a pickle
checkpoint (refused unless allowed), or a hub id. One set of weights serves three pipelines.

Every failure is a ``ModelError`` (or ``UnsafeCheckpoint``) whose message is one line naming the model
and the problem; the CLI prints it, the service reports it from ``/ready``.
"""

from __future__ import annotations

import inspect
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdworker.errors import ModelError, UnsafeCheckpoint
from sdworker.settings import Settings

log = logging.getLogger(__name__)

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float32": torch.float32, "fp32": torch.float32}


@dataclass(frozen=True, slots=True)
class ModelSource:
    """Where the weights come from. ``kind``: folder | single_file | pickle | hub."""

    kind: str
    location: str  # a path or a hub id
    is_demo: bool = False


@dataclass(slots=True)
class LoadedModel:
    """Three pipelines over one set of modules (``unet``/``transformer``, ``vae``, text encoders are the
    same objects). A pipeline is None where the model cannot run that operation (a FLUX.1 Fill model
    only inpaints); ``pipe`` is the one the model was loaded as (its VAE, scheduler and LoRA loader)."""

    text_to_image: Any
    image_to_image: Any
    inpaint: Any
    family: str  # sd1 | sd2 | sdxl | flux1
    device: torch.device
    dtype: torch.dtype
    source: ModelSource
    base_pipe: Any = None  # when text_to_image is None

    @property
    def pipe(self) -> Any:
        return self.text_to_image if self.base_pipe is None else self.base_pipe


def resolve_device(settings: Settings) -> tuple[torch.device, torch.dtype]:
    """``auto``: CUDA with float16 when present, else the CPU with float32. Flags override each part."""
    name = settings.device.strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ModelError(f"--device {settings.device!r} is not a device (auto, cpu, cuda, cuda:N, mps)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"--device {settings.device}: CUDA is not available on this machine")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"--device {settings.device}: MPS is not available on this machine")
    dtype_name = settings.dtype.strip().lower()
    if dtype_name == "auto":
        dtype = torch.float16 if device.type == "cuda" else torch.float32
    elif dtype_name in _DTYPES:
        dtype = _DTYPES[dtype_name]
    else:
        raise ModelError(f"--dtype {settings.dtype!r} is not one of auto, float16, bfloat16, float32")
    return device, dtype


def resolve_source(settings: Settings) -> ModelSource:
    """Decide what ``settings.model`` names, without loading anything."""
    model = settings.model.strip()
    if model == "demo":
        from sdworker.engine.demo_model import ensure_demo_model

        try:
            return ModelSource("folder", str(ensure_demo_model(settings.cache_dir)), is_demo=True)
        except OSError as exc:
            raise ModelError(
                f"model demo: cannot build it in {settings.cache_dir}: {exc.strerror or exc} "
                "(set --cache-dir to a writable folder, or delete a damaged demo-v8 folder there)"
            ) from exc
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise ModelError(f"model {model}: the folder is not a diffusers model (no model_index.json)")
        return ModelSource("folder", str(path))
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".safetensors", ".gguf"):  # GGUF: a FLUX.1 transformer file (``engine.gguf_file``)
            return ModelSource("single_file", str(path))
        if suffix in PICKLE_SUFFIXES:
            if not settings.allow_unsafe_pickle:
                raise UnsafeCheckpoint(
                    f"model {model}: {suffix} checkpoints are Python pickles that can run code when loaded; "
                    "use a .safetensors file, or pass --allow-unsafe-pickle to load it with weights_only=True"
                )
            return ModelSource("pickle", str(path))
        raise ModelError(f"model {model}: not a model file (expected .safetensors, or a diffusers folder)")
    if _HUB_ID.match(model) and not model.startswith("."):
        return ModelSource("hub", model)
    raise ModelError(f"model {model}: no such file or folder")


def load_model(
    settings: Settings,
    source: ModelSource | None = None,
    *,
    model_config: str | None = None,
    family: str | None = None,
    transformer_only: bool = False,
    components: dict[str, Any] | None = None,
    offload: str | None = None,
) -> LoadedModel:
    """Load a model onto its device: slow. ``source`` defaults to what ``settings.model`` names;
    ``model_config`` (a diffusers folder of the same architecture) defaults to ``--model-config``.
    ``family``: what the library found in the files (a transformer family loads through its adapter,
    ``sdworker.engine.families``); None = a UNet family, told apart by the loaded pipeline.
    ``components``: modules already in memory (a text encoder or VAE another model shares), used
    instead of loading those parts. ``offload`` (default ``--offload``; a model's own from the models
    folder's ``sdworker.toml``): the parts stay on the CPU and diffusers' hooks move each to the card
    when it runs (``apply_offload``)."""
    source = source if source is not None else resolve_source(settings)
    label = source.location if source.kind != "memory" else settings.model
    device, dtype = resolve_device(settings)
    _quiet_library_progress_bars()
    config = model_config or (str(settings.model_config_dir) if settings.model_config_dir else None)
    from sdworker.engine.families import flow_adapter

    adapter = flow_adapter(family) if family is not None else None
    if settings.quantize != "none" and adapter is None:
        log.warning("model %s: --quantize %s applies to the transformer families; this UNet model loads "
                    "unquantised", label, settings.quantize)
    try:
        if adapter is not None:
            components = dict(components or {})
            if source.kind == "folder" and settings.quantize == "none" and _fits_read_whole(Path(source.location)):
                # The same leak as the UNet families' (``_load_base_pipeline``): read the files whole.
                # A quantised load goes through diffusers' quantizer, which wants its own loading path.
                components.update(_parts_read_whole(Path(source.location), dtype, components))
            base = adapter.load_base(source, dtype, config, transformer_only=transformer_only,
                                     use_safetensors=not settings.allow_unsafe_pickle, quantize=settings.quantize,
                                     components=components)
        else:
            base = _load_base_pipeline(source, settings, dtype, config, components or {})
    except (ModelError, UnsafeCheckpoint):
        raise
    except Exception as exc:  # diffusers raises OSError, ValueError, EnvironmentError, safetensors errors...
        log.debug("loading %s failed", label, exc_info=True)
        raise ModelError(_load_failure(label, config, source, exc)) from exc
    family = family if adapter is not None and family is not None else detect_family(base)
    wanted = settings.offload if offload is None else offload
    offload = wanted if device.type == "cuda" else "none"  # Settings and model_options refuse it off CUDA
    try:
        if device.type != "cpu" and offload == "none":  # loaded on the CPU; .to() there only logs warnings
            base.to(device)
    except Exception as exc:
        raise ModelError(f"model {label}: cannot move it to {device}: {_first_line(exc)}") from exc
    built: LoadedModel = (adapter.build(base, device, dtype, source) if adapter is not None
                          else build_pipelines(base, family, device, dtype, source))
    if offload != "none":
        apply_offload(built, offload, device)
    return built


def apply_offload(model: LoadedModel, offload: str, device: torch.device) -> None:
    """diffusers' CPU offload over a model's pipelines, which share their modules.

    ``model``: ``enable_model_cpu_offload`` hooks each whole part (text encoder, UNet/transformer, VAE)
    to move to the card when its ``forward`` starts and back when the next part starts; every pipeline
    gets it, because a pipeline's call ends with ``maybe_free_model_hooks``, which re-installs the hooks
    (and puts the last part back on the CPU) only on a pipeline that enabled offload itself.
    ``sequential``: ``enable_sequential_cpu_offload`` keeps every weight on the CPU and streams each
    layer to the card as it runs (slowest, least memory); its hooks live on the shared modules, so the
    base pipeline installs them once and the other pipelines find the execution device through them.
    """
    pipes = [p for p in (model.pipe, model.text_to_image, model.image_to_image, model.inpaint) if p is not None]
    unique = list({id(p): p for p in pipes}.values())
    if offload == "sequential":
        unique[0].enable_sequential_cpu_offload(device=device)
        return
    for pipe in unique:
        pipe.enable_model_cpu_offload(device=device)


def build_pipelines(
    base: Any, family: str, device: torch.device, dtype: torch.dtype, source: ModelSource
) -> LoadedModel:
    """The image-to-image and inpainting pipelines over ``base``'s very modules (no second load)."""
    import diffusers

    prefix = "StableDiffusionXL" if family == "sdxl" else "StableDiffusion"
    image_to_image = share_modules(getattr(diffusers, f"{prefix}Img2ImgPipeline"), base)
    inpaint = share_modules(getattr(diffusers, f"{prefix}InpaintPipeline"), base)
    for pipe in (base, image_to_image, inpaint):
        pipe.set_progress_bar_config(disable=True)
    return LoadedModel(base, image_to_image, inpaint, family, device, dtype, source)


def share_modules(cls: Any, base: Any) -> Any:
    """``cls`` built from ``base``'s components and options.

    Not ``from_pipe``: it ends with ``.to(dtype)``, float32 unless told otherwise, which would cast the
    shared modules of a float16 model too. The constructor just registers the same objects.
    """
    params = inspect.signature(cls.__init__).parameters
    components = base.components
    kwargs: dict[str, Any] = {}
    for name in params:
        if name in components:
            kwargs[name] = components[name]
        elif name in base.config and not name.startswith("_"):
            kwargs[name] = base.config[name]
    if "requires_safety_checker" in params:
        kwargs["requires_safety_checker"] = False
    return cls(**kwargs)


def _quiet_library_progress_bars() -> None:
    """diffusers/transformers draw "Loading components" bars on stderr; the worker reports its own state."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()
    transformers_logging.disable_progress_bar()


def detect_family(pipe: Any) -> str:
    """sdxl by pipeline class, sd2 by its 1024-wide text conditioning, else sd1."""
    if "XL" in type(pipe).__name__:
        return "sdxl"
    cross = pipe.unet.config.get("cross_attention_dim") if hasattr(pipe.unet, "config") else None
    return "sd2" if cross == 1024 else "sd1"


def _load_base_pipeline(
    source: ModelSource, settings: Settings, dtype: torch.dtype, model_config: str | None, components: dict[str, Any]
) -> Any:
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if source.kind in ("folder", "hub"):
        cls = StableDiffusionXLPipeline if _folder_is_sdxl(source) else StableDiffusionPipeline
        kwargs: dict[str, Any] = {"dtype": dtype, **components}
        if cls is StableDiffusionPipeline:
            kwargs.update(safety_checker=None, requires_safety_checker=False)
        if not settings.allow_unsafe_pickle:
            kwargs["use_safetensors"] = True  # a folder of .bin pickles is refused like a .ckpt
        if source.kind == "folder" and _fits_read_whole(Path(source.location)):
            # safetensors 0.8's mmap path keeps ~60 bytes per tensor per load for good (measured: ~30 KB
            # per demo model load, the soak's RSS slope); reading the file whole does not. It costs a
            # transient copy of the file, so only models of at most READ_WHOLE_BYTES do it. diffusers
            # passes disable_mmap to its own models only: the text encoders are loaded here.
            kwargs["disable_mmap"] = True
            kwargs.update(_text_encoders_read_whole(Path(source.location), dtype, kwargs))
        return cls.from_pretrained(source.location, **kwargs)
    # single_file and (allowed) pickle: diffusers converts the original layout; for pickles its
    # loader calls torch.load(weights_only=True), so even an allowed pickle cannot run code.
    cls = StableDiffusionXLPipeline if _checkpoint_is_sdxl(source) else StableDiffusionPipeline
    kwargs = {"dtype": dtype}
    if cls is StableDiffusionPipeline:
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    if model_config:
        if not Path(model_config).expanduser().is_dir():
            raise ModelError(f"--model-config {model_config}: no such folder")
        kwargs["config"] = str(Path(model_config).expanduser())
    return cls.from_single_file(source.location, **kwargs)


READ_WHOLE_BYTES = 2 * 1024**3


def _text_encoders_read_whole(folder: Path, dtype: torch.dtype, given: dict[str, Any]) -> dict[str, Any]:
    """The folder's transformers text encoders not in ``given``, loaded with ``disable_mmap``."""
    import transformers

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    loaded: dict[str, Any] = {}
    for name, value in index.items():
        if (name.startswith("text_encoder") and name not in given and isinstance(value, list)
                and len(value) == 2 and value[0] == "transformers" and (folder / name).is_dir()):
            cls = getattr(transformers, str(value[1]))
            loaded[name] = cls.from_pretrained(str(folder / name), dtype=dtype, disable_mmap=True)
    return loaded


def _parts_read_whole(folder: Path, dtype: torch.dtype, given: dict[str, Any]) -> dict[str, Any]:
    """Every model part of a transformer family's folder (transformer, VAE, text encoders) not in
    ``given``, loaded with ``disable_mmap``: its pipeline's ``from_pretrained`` then only assembles them.
    diffusers would pass ``disable_mmap`` to its own models but not to the transformers encoders (a
    Qwen-Image or FLUX.2 text encoder is most of the model), so every part is loaded here the same way."""
    import diffusers
    import transformers

    index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
    loaded: dict[str, Any] = {}
    for name, value in index.items():
        if name.startswith("_") or name in given or not (folder / name).is_dir():
            continue
        if not (isinstance(value, list) and len(value) == 2 and value[0] in ("diffusers", "transformers")):
            continue
        library = diffusers if value[0] == "diffusers" else transformers
        cls = getattr(library, str(value[1]), None)
        base = diffusers.ModelMixin if value[0] == "diffusers" else transformers.PreTrainedModel
        if not (isinstance(cls, type) and issubclass(cls, base)):
            continue  # schedulers, tokenizers, processors: no weights
        loaded[name] = cls.from_pretrained(str(folder / name), dtype=dtype, disable_mmap=True)
    return loaded


def _fits_read_whole(folder: Path) -> bool:
    """Whether every weights file of a diffusers folder is small enough to read whole (not mmap)."""
    try:
        return all(f.stat().st_size <= READ_WHOLE_BYTES for f in folder.glob("*/*.safetensors"))
    except OSError:
        return False


def _folder_is_sdxl(source: ModelSource) -> bool:
    if source.kind != "folder":
        return "xl" in source.location.lower()  # a hub id: the best guess without fetching
    index = json.loads((Path(source.location) / "model_index.json").read_text(encoding="utf-8"))
    return "XL" in str(index.get("_class_name", ""))


def _checkpoint_is_sdxl(source: ModelSource) -> bool:
    if source.kind != "single_file":
        return False  # reading a pickle's keys means loading it all; SDXL pickles are rare
    from safetensors import safe_open

    try:
        with safe_open(source.location, framework="pt") as handle:
            return any(key.startswith("conditioner.embedders.1.") for key in handle.keys())  # noqa: SIM118
    except Exception as exc:
        raise ModelError(f"model {source.location}: not a readable safetensors file: {_first_line(exc)}") from exc


def _load_failure(label: str, model_config: str | None, source: ModelSource, exc: BaseException) -> str:
    """One line saying what failed, with the likely fix where there is one."""
    reason = _first_line(exc)
    if source.kind == "hub":
        return f"model {label}: not a local file or folder, and loading it as a hub id failed: {reason}"
    if source.kind in ("single_file", "pickle") and not model_config:
        return (
            f"model {label}: cannot load it: {reason} (to load a single file offline, pass "
            "--model-config DIR: a diffusers folder of the same architecture, for its configs and tokenizer; "
            "or put one of the same family in --models-dir)"
        )
    return f"model {label}: cannot load it: {reason}"


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip()
    line = text.splitlines()[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."

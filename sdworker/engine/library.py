"""The model library: what ``--models-dir``, ``--model`` and ``--lora-dir`` offer, found without loading.

Everything here reads file names, JSON configs and safetensors *headers* only (a few KB), so the API
thread can list models and check a request's ``model``/``loras`` at submit time while the engine
thread generates. The library is thread-safe (one lock around its tables).

Models: under ``--models-dir``, at any depth, a folder with ``model_index.json`` is a diffusers model
(named by its path relative to the folder) and a ``.safetensors`` file is a single-file checkpoint
(named by its relative path without the suffix); pickles (``.ckpt``...) are listed only with
``--allow-unsafe-pickle``. ``--model`` adds one more (a path, a hub id or ``demo``; ``demo`` without
``--models-dir`` means the demo bundle: both demo models, their LoRAs and the embedding). The family
(sd1 | sd2 | sdxl) comes from ``model_index.json`` + the UNet config, or from a checkpoint's key names.

LoRAs: a name is looked up as ``--lora-dir/<name>.safetensors`` after refusing absolute paths and
``..``; a symlink that leads out of the folder, a pickle, or a file that is not a LoRA is refused with
an error naming the request field. Its family is read from its key names and the width of its
cross-attention (768 SD 1.x, 1024 SD 2.x, 2048 SDXL; the demo's tiny models have their own widths, which
the fit check compares with the model's).
"""

from __future__ import annotations

import json
import logging
import re
import threading
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any

from sdworker.domain.families import family_facts, family_for_index
from sdworker.domain.parameters import model_label
from sdworker.domain.prompt_syntax import normalize_lora_name
from sdworker.domain.unet_inpainting import INPAINTING
from sdworker.engine.gguf_file import GGUF_SUFFIX, read_gguf_header
from sdworker.engine.inpainting_unet import INPAINT_IN_CHANNELS
from sdworker.engine.lora_family import transformer_lora_family
from sdworker.engine.model_options import check_names, read_model_options
from sdworker.engine.models import PICKLE_SUFFIXES, ModelSource, resolve_source
from sdworker.engine.weights import WeightFiles, file_bytes, folder_parts, load_element_bytes, read_safetensors_header
from sdworker.errors import InvalidRequest, LoraIncompatible, LoraNotFound, ModelError, ModelNotFound, UnsafeCheckpoint
from sdworker.settings import Settings

log = logging.getLogger(__name__)

_CONTEXT_FAMILIES = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
# Families whose LoRAs are told apart by key names alone (no cross-attention width to compare).
TRANSFORMER_FAMILIES = frozenset({"flux1", "sd3", "zimage", "qwenimage", "flux2"})
_MAX_DEPTH = 4
_CHECKPOINT_TO_K = re.compile(r"^model\.diffusion_model\..*attn2\.to_k\.weight$")
# attn2's to_k down-projection in the peft, kohya and old diffusers ("processor.to_k_lora") layouts.
_LORA_TO_K = re.compile(r"attn2(?:\.processor)?[._]to_k(?:\.lora_A|\.lora_down|\.lora\.down|_lora\.down)\.weight$")


@dataclass(frozen=True, slots=True)
class ModelEntry:
    name: str
    family: str  # sd1 | sd2 | sdxl (a guess for hub ids until loaded)
    kind: str  # folder | file | hub | memory
    source: ModelSource
    native_size: int
    context_dim: int | None  # the UNet's cross-attention width, when the files tell
    hash_file: Path | None  # what the model hash is taken of
    variant: str = ""  # FLUX.1 dev | schnell | fill | kontext; SD inpainting ("" = the family's default)
    transformer_only: bool = False  # a single file holding only the transformer (completed from a folder)
    parts: tuple[WeightFiles, ...] = ()  # its weights by component, sized from the headers (none: unknown)
    offload: str = ""  # its own offload from the models folder's sdworker.toml ("" = the worker's --offload)

    @property
    def size_bytes(self) -> int | None:
        """What the model holds once loaded (at the worker's dtype); None when the files cannot tell (a
        hub id, a pickle, a model built in memory) until it has been loaded once and measured."""
        return sum(part.bytes for part in self.parts) if self.parts else None


@dataclass(frozen=True, slots=True)
class LoraEntry:
    name: str  # family: sd1 | sd2 | sdxl | flux1 | flux2 | sd3 | zimage | qwenimage when its keys tell
    path: Path
    family: str | None
    format: str  # peft | kohya | unknown
    context_dim: int | None


def native_size(family: str) -> int:
    return family_facts(family).native_size


class ModelLibrary:
    """Models and LoRAs by name. ``refresh()`` rescans; an unknown model name triggers one rescan."""

    def __init__(self, settings: Settings, *, memory: ModelEntry | None = None) -> None:
        """``memory``: a model built in memory (benchmarks, tests); it is then the default and ``--model``
        is not looked at."""
        self.settings = settings
        self._lock = threading.RLock()
        self._models: dict[str, ModelEntry] = {}
        self._default: str | None = None
        self._lora_cache: dict[tuple[str, int, int], LoraEntry] = {}
        self._extra: ModelEntry | None = None  # --model, resolved once
        self._memory = memory
        self._measured: dict[str, int] = {}  # sizes measured at load for models whose files cannot tell
        # Models of the folder that cannot be used, and why (unreadable files, or their load failed):
        # listed with the reason so a user sees what is wrong, never chosen to run a job.
        self._broken: dict[str, str] = {}
        self._unreadable: dict[str, str] = {}  # found unreadable by the last scan
        self.models_dir, self.lora_dir, self.embeddings_dir = self._folders(settings, demo=memory is None)
        self.refresh()

    # -- folders -------------------------------------------------------------------------------------

    @staticmethod
    def _folders(settings: Settings, *, demo: bool) -> tuple[Path | None, Path | None, Path | None]:
        def path(value: str | Path | None) -> Path | None:
            return Path(value).expanduser() if value else None

        models, loras, embeddings = path(settings.models_dir), path(settings.lora_dir), path(settings.embeddings_dir)
        if demo and models is None and settings.model.strip() == "demo":
            from sdworker.engine.demo_model import EMBEDDINGS_DIR, LORAS_DIR, MODELS_DIR, ensure_demo_bundle

            try:
                bundle = ensure_demo_bundle(settings.cache_dir)
            except OSError as exc:
                raise ModelError(
                    f"model demo: cannot build it in {settings.cache_dir}: {exc.strerror or exc} "
                    "(set --cache-dir to a writable folder, or delete a damaged demo folder there)"
                ) from exc
            models = bundle / MODELS_DIR
            loras = loras or bundle / LORAS_DIR
            embeddings = embeddings or bundle / EMBEDDINGS_DIR
        return models, loras, embeddings

    @property
    def is_demo(self) -> bool:
        return self._memory is None and self.settings.models_dir is None and self.settings.model.strip() == "demo"

    # -- models --------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Rescan the models folder (LoRAs are looked up per request, so they need no scan)."""
        found: dict[str, ModelEntry] = {}
        unreadable: dict[str, str] = {}
        if self.models_dir is not None:
            if not self.models_dir.is_dir():
                raise ModelError(f"--models-dir {self.models_dir}: no such folder")
            for entry in self._scan(self.models_dir, self.models_dir, 0, unreadable):
                found.setdefault(entry.name, entry)
        extra = self._extra_model()
        if extra is not None:
            found.setdefault(extra.name, extra)
        if self._memory is not None:
            found[self._memory.name] = self._memory
        found = {name: self._with_measured(self._completed(entry, found)) for name, entry in found.items()}
        if self.models_dir is not None:
            options = read_model_options(self.models_dir, self.settings)
            check_names(options, found, self.models_dir)
            found.update({name: replace(found[name], offload=o.offload) for name, o in options.items()})
        with self._lock:
            self._models = dict(sorted(found.items()))
            self._unreadable = {name: why for name, why in unreadable.items() if name not in found}
            self._broken = {}  # a rescan is asked when files changed: a failed model gets another try
            self._default = self._pick_default()

    def broken(self) -> dict[str, str]:
        """Models that cannot be used, with the reason: unreadable in the folder, or their last load failed."""
        with self._lock:
            return {**self._unreadable, **self._broken}

    def mark_broken(self, name: str, reason: str) -> None:
        """``name`` failed to load: shown with ``reason`` until a refresh finds it again (fixed files)."""
        with self._lock:
            if name in self._models:
                self._broken[name] = reason

    def _extra_model(self) -> ModelEntry | None:
        """``--model`` when it names something other than the demo bundle."""
        if self.settings.model.strip() == "demo" or self._memory is not None:
            return None
        if self._extra is None:
            source = resolve_source(self.settings)
            name = model_label(self.settings.model)
            if source.kind == "hub":
                family = "sdxl" if "xl" in source.location.lower() else "sd1"
                self._extra = ModelEntry(name, family, "hub", source, native_size(family), None, None)
            else:
                self._extra = self._describe(Path(source.location), name, source)
        return self._extra

    def _completed(self, entry: ModelEntry, found: dict[str, ModelEntry]) -> ModelEntry:
        """A transformer-only file gets the other parts of the folder that completes it (its size then
        counts the text encoders and VAE it will load, which it may share with that folder's model)."""
        if not entry.transformer_only:
            return entry
        folder = self.settings.model_config_dir or _config_folder(entry, found.values())
        if folder is None or not (Path(folder) / "model_index.json").is_file():
            return entry
        try:
            rest = folder_parts(Path(folder), load_element_bytes(self.settings), skip=frozenset({"transformer"}))
        except (OSError, ValueError) as exc:
            log.warning("cannot size the parts of %s for %s: %s", folder, entry.name, exc)
            return entry
        return replace(entry, parts=entry.parts + rest)

    def _with_measured(self, entry: ModelEntry) -> ModelEntry:
        size = self._measured.get(entry.name)
        if size is None or entry.parts:
            return entry
        return replace(entry, parts=(WeightFiles("measured", (), size),))

    def record_size(self, name: str, size: int) -> None:
        """What a model whose files cannot tell its size (a hub id, a pickle) held once loaded: from now on
        it is sized like the others (listed, judged at submit, room made before it loads again)."""
        with self._lock:
            self._measured[name] = size
            entry = self._models.get(name)
            if entry is not None:
                self._models[name] = self._with_measured(entry)

    def _pick_default(self) -> str | None:
        wanted = self.settings.default_model
        if wanted:
            if wanted not in self._models:
                raise ModelNotFound(f"--default-model {wanted}: not in the library ({self._names_hint()})")
            return wanted
        if self._memory is not None:
            return self._memory.name
        if self._extra is not None:
            return self._extra.name
        if self.is_demo:
            from sdworker.engine.demo_model import DEMO_SD15

            return DEMO_SD15
        return next(iter(self._models), None)

    def _scan(self, root: Path, folder: Path, depth: int, unreadable: dict[str, str]) -> list[ModelEntry]:
        entries: list[ModelEntry] = []
        try:
            children = sorted(folder.iterdir())
        except OSError as exc:
            log.warning("cannot read %s: %s", folder, exc)
            return entries
        for child in children:
            if child.name.startswith("."):
                continue
            name = PurePosixPath(child.relative_to(root).as_posix())
            try:
                if child.is_dir():
                    if (child / "model_index.json").is_file():
                        entries.append(self._describe(child, str(name), ModelSource("folder", str(child))))
                    elif depth < _MAX_DEPTH:
                        entries.extend(self._scan(root, child, depth + 1, unreadable))
                elif child.suffix.lower() in (".safetensors", GGUF_SUFFIX):
                    source = ModelSource("single_file", str(child))
                    entries.append(self._describe(child, str(name.with_suffix("")), source))
                elif child.suffix.lower() in PICKLE_SUFFIXES and self.settings.allow_unsafe_pickle:
                    source = ModelSource("pickle", str(child))
                    entries.append(self._describe(child, str(name.with_suffix("")), source))
            except (OSError, ValueError) as exc:
                log.error("model %s: not a readable model (%s); listed with this error, not used", child, exc)
                listed = name if child.is_dir() else name.with_suffix("")
                unreadable[str(listed)] = f"not a readable model: {exc}"
        return entries

    def _describe(self, path: Path, name: str, source: ModelSource) -> ModelEntry:
        is_demo = self.is_demo and source.kind == "folder"
        source = replace(source, is_demo=source.is_demo or is_demo)
        element_bytes = load_element_bytes(self.settings)
        if source.kind == "folder":
            entry = _describe_folder(path, name, source)
            return replace(entry, parts=folder_parts(path, element_bytes))
        if source.kind == "single_file":
            gguf = path.suffix.lower() == GGUF_SUFFIX
            header = read_gguf_header(path) if gguf else read_safetensors_header(path)
            entry = _describe_checkpoint(path, name, source, header)
            part = "transformer" if entry.transformer_only else "checkpoint"
            # a GGUF file's blocks stay quantised in memory (dequantised per layer as it computes)
            size = path.stat().st_size if gguf else file_bytes(path, element_bytes, header)
            return replace(entry, parts=(WeightFiles(part, (path,), size),))
        return ModelEntry(name, "sd1", "file", source, native_size("sd1"), None, path)  # a pickle: not opened

    def models(self) -> list[ModelEntry]:
        with self._lock:
            return list(self._models.values())

    @property
    def default_name(self) -> str:
        with self._lock:
            if self._default is None:
                where = f"--models-dir {self.models_dir}" if self.models_dir else "--model"
                raise ModelNotFound(f"no model found ({where} has no diffusers folder or .safetensors file)")
            return self._default

    def model(self, name: str | None, *, field: str = "model") -> ModelEntry:
        """The entry for ``name`` (None = the default). An unknown name rescans once, then 404s."""
        wanted = name or self.default_name
        with self._lock:
            entry = self._models.get(wanted)
        if entry is None:
            self.refresh()
            with self._lock:
                entry = self._models.get(wanted)
        if entry is None and wanted in self.broken():
            raise ModelError(f"{field}: model {wanted!r} cannot be used: {self.broken()[wanted]}", field=field)
        if entry is None:
            raise ModelNotFound(f"{field}: no model named {wanted!r} ({self._names_hint()})", field=field)
        return entry

    def update_family(self, name: str, family: str) -> None:
        """What loading found (a hub id's family is a guess until then)."""
        with self._lock:
            entry = self._models.get(name)
            if entry is not None and entry.family != family:
                self._models[name] = replace(entry, family=family, native_size=native_size(family))

    def _names_hint(self) -> str:
        names = list(self._models)
        shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "")
        return f"known: {shown}" if names else "the library is empty"

    # -- LoRAs ---------------------------------------------------------------------------------------

    def loras(self) -> list[LoraEntry]:
        if self.lora_dir is None or not self.lora_dir.is_dir():
            return []
        found: list[LoraEntry] = []
        for path in sorted(self.lora_dir.rglob("*.safetensors")):
            name = path.relative_to(self.lora_dir).with_suffix("").as_posix()
            try:
                found.append(self.lora(name))
            except InvalidRequest as exc:
                log.info("not listing %s: %s", path, exc.message)
        return found

    def lora(self, name: str, *, field: str = "loras") -> LoraEntry:
        """The LoRA called ``name`` (with or without ``.safetensors``), refused with a 4xx naming ``field``
        when the name leaves the folder, names a pickle, is missing or is not a LoRA."""
        raw = name.strip()
        parts = raw.replace("\\", "/").split("/")
        if not raw or raw.startswith(("/", "\\", "~")) or re.match(r"^[A-Za-z]:", raw) or ".." in parts or "\0" in raw:
            raise InvalidRequest(
                f"{field}: LoRA {name!r} is not a name inside the LoRA folder (no absolute paths, '~' or '..')",
                field=field,
            )
        if PurePosixPath(raw).suffix.lower() in PICKLE_SUFFIXES:
            raise UnsafeCheckpoint(
                f"{field}: LoRA {name!r} is a pickle, which can run code when loaded; use its .safetensors file",
                field=field,
            )
        if self.lora_dir is None:
            raise LoraNotFound(f"{field}: LoRA {name!r}: this worker has no LoRA folder (--lora-dir)", field=field)
        base = normalize_lora_name(raw.replace("\\", "/"))
        path = self.lora_dir / f"{base}.safetensors"
        if not path.is_file():
            if any((self.lora_dir / f"{base}{suffix}").is_file() for suffix in PICKLE_SUFFIXES):
                raise UnsafeCheckpoint(
                    f"{field}: LoRA {name!r} exists only as a pickle, which we never load; convert it to .safetensors",
                    field=field,
                )
            raise LoraNotFound(f"{field}: no LoRA named {base!r} in the LoRA folder", field=field)
        root = self.lora_dir.resolve()
        real = path.resolve()
        if not real.is_relative_to(root):
            raise InvalidRequest(f"{field}: LoRA {name!r} leads out of the LoRA folder (a symlink)", field=field)
        stat = real.stat()
        key = (str(real), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            cached = self._lora_cache.get(key)
        if cached is not None:
            return replace(cached, name=base)
        try:
            header = read_safetensors_header(real)
        except (OSError, ValueError) as exc:
            raise InvalidRequest(
                f"{field}: LoRA {base!r} is not a readable safetensors file ({exc})", field=field
            ) from None
        entry = _describe_lora(base, real, header)
        if entry.format == "unknown":
            raise InvalidRequest(f"{field}: {base!r} is not a LoRA (no lora_A/lora_down weights)", field=field)
        with self._lock:
            self._lora_cache[key] = entry
        return entry

    @staticmethod
    def check_lora_fits(lora: LoraEntry, model: ModelEntry, *, field: str = "loras") -> None:
        """Refuse a LoRA made for another architecture than ``model``'s (4xx naming ``field``)."""
        if (model.family in TRANSFORMER_FAMILIES or lora.family in TRANSFORMER_FAMILIES) and model.kind != "hub":
            if lora.family is None and lora.context_dim is None:
                return  # a transformer LoRA whose names do not tell the family: diffusers' loader decides
            if lora.family != model.family:
                what = lora.family or "a UNet model"
                raise LoraIncompatible(
                    f"{field}: LoRA {lora.name!r} is for {what}, not for model {model.name!r} ({model.family})",
                    field=field,
                )
            return
        if lora.context_dim is not None and model.context_dim is not None:
            fits = lora.context_dim == model.context_dim
        elif lora.family is not None and model.kind != "hub":
            fits = lora.family == model.family
        else:
            return  # cannot tell before loading; diffusers' loader decides
        if not fits:
            what = lora.family or f"a cross-attention width of {lora.context_dim}"
            raise LoraIncompatible(
                f"{field}: LoRA {lora.name!r} is for {what}, not for model {model.name!r} ({model.family})",
                field=field,
            )

    def config_folder_for(self, entry: ModelEntry) -> str | None:
        """For a single-file checkpoint: a diffusers folder of the same family in the library, whose
        configs and tokenizers let diffusers load the file offline."""
        with self._lock:
            return _config_folder(entry, self._models.values())


def _config_folder(entry: ModelEntry, models: Any) -> str | None:
    fits = [other for other in models if other.kind == "folder"
            and other.family == entry.family and other.context_dim == entry.context_dim]
    if entry.family == "flux2":  # dev's text encoder is Mistral 3, klein's Qwen 3: only the same kind completes it
        fits = [other for other in fits if (other.variant == "dev") == (entry.variant == "dev")]
    fits.sort(key=lambda other: other.variant != entry.variant)  # the same variant first (a Fill's config)
    return fits[0].source.location if fits else None


def _describe_folder(path: Path, name: str, source: ModelSource) -> ModelEntry:
    index = json.loads((path / "model_index.json").read_text(encoding="utf-8"))
    facts = family_for_index(str(index.get("_class_name", "")))
    if facts is not None and facts.name in TRANSFORMER_FAMILIES:
        transformer = _read_json(path / "transformer" / "config.json")
        own = path / "transformer" / "diffusion_pytorch_model.safetensors"
        variant = transformer_variant(facts.name, index, transformer, path.name)
        return ModelEntry(name, facts.name, "folder", source, facts.native_size, None,
                          own if own.is_file() else None, variant=variant)
    unet = _read_json(path / "unet" / "config.json")
    vae = _read_json(path / "vae" / "config.json")
    context = unet.get("cross_attention_dim")
    context_dim = context if isinstance(context, int) else None
    family = "sdxl" if "XL" in str(index.get("_class_name", "")) else "sd2" if context_dim == 1024 else "sd1"
    sample = unet.get("sample_size")
    factor = 2 ** (len(vae.get("block_out_channels", [0, 0, 0, 0])) - 1)
    native = int(sample) * factor if isinstance(sample, int) else native_size(family)
    weights = next(
        (p for p in (path / "unet" / "diffusion_pytorch_model.safetensors",
                     path / "unet" / "diffusion_pytorch_model.fp16.safetensors") if p.is_file()),
        None,
    )
    return ModelEntry(name, family, "folder", source, native, context_dim, weights,
                      variant=unet_variant(unet.get("in_channels")))


def unet_variant(in_channels: Any) -> str:
    """``inpainting`` for a UNet with 9 input channels (sd-v1-5-inpainting, SD 2 and SDXL inpainting:
    the noisy latents 4 + the mask 1 + the masked image's latents 4), else the family's default."""
    return INPAINTING if in_channels == INPAINT_IN_CHANNELS else ""


def transformer_variant(family: str, index: dict[str, Any], transformer: dict[str, Any], folder: str) -> str:
    """Which defaults a transformer model gets (``FamilyFacts.defaults``): FLUX.1 dev | schnell | fill |
    kontext; SD 3.5 large | medium | turbo (turbo shows only in the name, as Stability names it);
    Z-Image turbo (by name; an unnamed one gets Turbo's defaults too); FLUX.2 dev | klein (step-distilled,
    ``is_distilled`` in ``model_index.json``) | klein-base."""
    if family == "flux1":
        return flux1_variant(index, transformer)
    if family == "sd3":
        if "turbo" in folder.lower():
            return "turbo"
        return {38: "large", 24: "medium"}.get(int(transformer.get("num_layers", 0) or 0), "")
    if family == "zimage":
        return "turbo" if "turbo" in folder.lower() else ""
    if family == "flux2":
        if "Klein" not in str(index.get("_class_name", "")):
            return "dev"
        return "klein" if index.get("is_distilled") else "klein-base"
    if family == "qwenimage":  # an edit model (``domain.edit``): Plus takes several references
        index_class = str(index.get("_class_name", ""))
        return "edit-plus" if "EditPlus" in index_class else "edit" if "Edit" in index_class else ""
    return ""


def flux1_variant(index: dict[str, Any], transformer: dict[str, Any]) -> str:
    """dev (guidance input), schnell (none), fill (image + mask channels: 384 in), kontext (edit)."""
    if "Kontext" in str(index.get("_class_name", "")):
        return "kontext"
    if transformer.get("in_channels") == 384:
        return "fill"
    return "dev" if transformer.get("guidance_embeds", True) else "schnell"


def _describe_checkpoint(path: Path, name: str, source: ModelSource, header: dict[str, Any]) -> ModelEntry:
    gguf = path.suffix.lower() == GGUF_SUFFIX
    keys = header.keys()
    flux2 = _is_flux2_transformer(keys)
    if gguf and (flux2 or not _is_flux1_transformer(keys)):
        raise ValueError("GGUF files are read for FLUX.1 transformers only")
    if flux2:
        # klein and klein base share one architecture; BFL's file names tell them apart (flux-2-klein-base-4b)
        variant = "dev" if any("guidance_in." in k or "guidance_embedder." in k for k in keys) else (
            "klein-base" if "base" in path.name.lower() else "klein")
        return ModelEntry(name, "flux2", "file", source, native_size("flux2"), None, path, variant=variant,
                          transformer_only=not any(k.startswith(("vae.", "first_stage_model.")) for k in keys))
    if _is_flux1_transformer(keys):
        variant = _flux1_file_variant(header)
        return ModelEntry(name, "flux1", "file", source, native_size("flux1"), None, path, variant=variant,
                          transformer_only=not any(k.startswith(("vae.", "first_stage_model.")) for k in keys))
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        family = "sdxl"
    elif any(k.startswith("cond_stage_model.model.") for k in keys):
        family = "sd2"
    else:
        family = "sd1"
    context_dim = next(
        (int(v["shape"][1]) for k, v in header.items() if _CHECKPOINT_TO_K.match(k) and len(v.get("shape", [])) == 2),
        None,
    )
    first_conv = header.get("model.diffusion_model.input_blocks.0.0.weight", {}).get("shape", [])
    variant = unet_variant(first_conv[1] if len(first_conv) == 4 else None)
    return ModelEntry(name, family, "file", source, native_size(family), context_dim, path, variant=variant)


_FLUX1_BFL = re.compile(r"^(?:model\.diffusion_model\.)?double_blocks\.\d+\.img_attn\.")
_FLUX1_DIFFUSERS = re.compile(r"^(?:transformer\.)?single_transformer_blocks\.\d+\.")


# FLUX.2's shared modulation layers (BFL: ``.lin``, diffusers: ``.linear``) and diffusers' fused single-block
# projection; its BFL block names are FLUX.1's, so it is checked first.
_FLUX2_KEYS = re.compile(r"^(?:model\.diffusion_model\.)?(?:single_stream_modulation\.|double_stream_modulation_img\.)"
                         r"|^single_transformer_blocks\.\d+\.attn\.to_qkv_mlp_proj\.")


def _is_flux2_transformer(keys: Any) -> bool:
    return any(_FLUX2_KEYS.match(k) for k in keys)


def _is_flux1_transformer(keys: Any) -> bool:
    """FLUX.1's transformer in BFL's layout (``double_blocks.N.img_attn``, optionally under
    ``model.diffusion_model.``) or in diffusers' (``single_transformer_blocks.N``)."""
    return any(_FLUX1_BFL.match(k) or _FLUX1_DIFFUSERS.match(k) for k in keys)


def _flux1_file_variant(header: dict[str, Any]) -> str:
    for key in ("img_in.weight", "model.diffusion_model.img_in.weight", "x_embedder.weight"):
        shape = header.get(key, {}).get("shape", [])
        if len(shape) == 2 and shape[1] == 384:
            return "fill"
    if any("guidance_in." in k or "guidance_embedder." in k for k in header):
        return "dev"
    return "schnell"


def _describe_lora(name: str, path: Path, header: dict[str, Any]) -> LoraEntry:
    keys = list(header)
    if any(k.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_")) for k in keys):
        fmt = "kohya"
    elif any(".lora_A." in k or ".lora_B." in k or ".lora.down." in k or "_lora.down." in k for k in keys):
        fmt = "peft"
    else:
        fmt = "unknown"
    family = transformer_lora_family(header)
    if family is not None or any(k.startswith("transformer.") for k in keys):
        # a transformer's LoRA: SD 3.5's attn2 is not a UNet's cross-attention, its width no context width
        return LoraEntry(name, path, family, fmt, None)
    context_dim = next(
        (int(v["shape"][1]) for k, v in header.items() if _LORA_TO_K.search(k) and len(v.get("shape", [])) == 2),
        None,
    )
    if any(k.startswith(("lora_te2_", "text_encoder_2.", "lora_unet_input_blocks", "lora_unet_output_blocks"))
           for k in keys):
        family = "sdxl"
    elif context_dim is not None:
        family = _CONTEXT_FAMILIES.get(context_dim)
    return LoraEntry(name, path, family, fmt, context_dim)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}

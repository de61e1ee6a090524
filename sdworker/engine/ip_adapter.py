"""IP-Adapter in the engine: the IP-Adapter folder, its CLIP image encoders (the last used kept loaded)
and the job's pipeline with the adapter on.

The folder (``--ip-adapter-dir``) holds two layouts side by side:

- h94/IP-Adapter's, for SD 1.x/2.x/SDXL: adapter files (``NAME.safetensors``: ``image_proj.*`` and
  ``ip_adapter.*`` keys) and, beside them, the CLIP vision encoder they were trained with
  (``image_encoder/``, a ``CLIPVisionModelWithProjection`` folder);
- a folder per adapter, ``NAME/``: one ``.safetensors`` file (``ip_adapter.safetensors`` when there are
  several) and its own ``image_encoder/`` (else the shared one). This is how a FLUX.1 adapter comes:
  XLabs-AI/flux-ip-adapter's ``ip_adapter.safetensors`` (``ip_adapter_proj_model.*`` and
  ``double_blocks.N.processor.*`` keys) is trained with CLIP ViT-L, not h94's ViT-H.

Which family an adapter is for is read from its keys (``double_blocks.``/``ip_adapter_proj_model.`` or
biased key/value projections: FLUX.1; else SD), so an adapter on the other family's model is a 4xx at
submit, not a shape error in the middle of a job.

Why load and unload per job: diffusers' ``load_ip_adapter`` replaces the UNet's attention processors
and adds an image projection to the UNet itself, which the model's other pipelines share; once on,
every call needs an image. So a job gets a pipeline of its own over the model's modules
(``from_pipe``, microseconds), the adapter goes on for the job and comes off in ``finally`` whatever
happens (``unload_ip_adapter`` puts plain processors back): the next job runs the untouched model, as
on a fresh worker. FLUX.1 works the same way on the transformer (``FluxIPAdapterMixin``: its double-stream
blocks get IP processors; ``unload_ip_adapter`` puts plain ``FluxAttnProcessor``s back). The adapter's
tensors stay cached on the CPU like LoRA files (the last ``MAX_CACHED_ADAPTERS``, keyed by path and
mtime, so a replaced file is read again); the image encoder, the large part, stays loaded (the last one
used: SD and FLUX adapters use different encoders) and is handed to each job's pipeline.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sdworker.domain.request import IpAdapterRef
from sdworker.engine.library import ModelEntry, read_safetensors_header
from sdworker.errors import InvalidRequest, IpAdapterNotFound

SD_FAMILIES = frozenset({"sd1", "sd2", "sdxl"})
IP_ADAPTER_FAMILIES = SD_FAMILIES | {"flux1"}
IMAGE_ENCODER_DIR = "image_encoder"
SUFFIX = ".safetensors"
FOLDER_WEIGHTS = "ip_adapter.safetensors"
MAX_CACHED_ADAPTERS = 2
_FLUX_PREFIXES = ("double_blocks.", "ip_adapter_proj_model.")


class IpAdapters:
    """The IP-Adapter folder. ``names``/``path``/``check`` read file headers only and may run on any
    thread; ``applied`` on the engine's thread."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._encoder: tuple[tuple[str, str, str], Any] | None = None  # (folder, device, dtype) -> encoder
        self._states: OrderedDict[tuple[str, int], dict[str, dict[str, torch.Tensor]]] = OrderedDict()
        self._lock = threading.Lock()

    def _adapters(self) -> dict[str, tuple[Path, Path]]:
        """Name -> (weights file, image encoder folder), for both layouts (module docstring)."""
        if self.folder is None or not self.folder.is_dir():
            return {}
        shared = self.folder / IMAGE_ENCODER_DIR
        found: dict[str, tuple[Path, Path]] = {}
        if shared.is_dir():
            for file in self.folder.glob(f"*{SUFFIX}"):
                if file.is_file():
                    found[file.name.removesuffix(SUFFIX)] = (file, shared)
        for sub in self.folder.iterdir():
            if not sub.is_dir() or sub.name == IMAGE_ENCODER_DIR or sub.name.startswith("."):
                continue
            files = sorted(p for p in sub.glob(f"*{SUFFIX}") if p.is_file())
            weights = sub / FOLDER_WEIGHTS if (sub / FOLDER_WEIGHTS).is_file() else None
            if weights is None and len(files) == 1:
                weights = files[0]
            encoder = sub / IMAGE_ENCODER_DIR if (sub / IMAGE_ENCODER_DIR).is_dir() else shared
            if weights is not None and encoder.is_dir():
                found.setdefault(sub.name, (weights, encoder))
        return found

    def names(self) -> list[str]:
        return sorted(self._adapters())

    def _find(self, name: str, field: str) -> tuple[Path, Path]:
        if self.folder is None:
            raise IpAdapterNotFound(f"{field}: IP-Adapter {name!r}: this worker has no IP-Adapter folder "
                                    "(--ip-adapter-dir)", field=field)
        base = name.strip().removesuffix(SUFFIX)
        adapters = self._adapters()
        if not base or "/" in base or "\\" in base or base.startswith(".") or base not in adapters:
            raise IpAdapterNotFound(f"{field}: no IP-Adapter named {base!r} in the IP-Adapter folder (with its "
                                    f"image_encoder/); known: {', '.join(sorted(adapters)) or 'none'}", field=field)
        return adapters[base]

    def path(self, name: str, field: str) -> Path:
        return self._find(name, field)[0]

    def check(self, ref: IpAdapterRef, model: ModelEntry, prefix: str = "ip_adapter") -> None:
        """The adapter exists and was made for ``model``'s family and width (4xx naming the field)."""
        if model.family not in IP_ADAPTER_FAMILIES or (model.family == "flux1" and model.variant == "fill"):
            raise InvalidRequest(f"{prefix}: IP-Adapter runs on SD 1.x, 2.x, SDXL and FLUX.1 (not Fill) models; "
                                 f"{model.name!r} is {model.family} {model.variant}".rstrip(), field=prefix)
        field = f"{prefix}.model"
        header = read_safetensors_header(self.path(ref.model, field))
        kind = adapter_family(header)
        if (kind == "flux1") != (model.family == "flux1"):
            made_for = "FLUX.1" if kind == "flux1" else "SD 1.x/2.x/SDXL"
            raise InvalidRequest(f"{field}: IP-Adapter {ref.model!r} is for {made_for} models, not for model "
                                 f"{model.name!r} ({model.family})", field=field)
        if kind == "flux1":
            return  # the transformer's width is not in a single file's entry; a mismatch fails at load
        shape = header.get("image_proj.proj.weight", {}).get("shape")
        norm = header.get("image_proj.norm.weight", {}).get("shape")
        width = int(norm[0]) if norm else None  # the context width its tokens are made for
        if shape is not None and width is not None and model.context_dim is not None and width != model.context_dim:
            raise InvalidRequest(
                f"{field}: IP-Adapter {ref.model!r} is for a UNet of cross-attention width {width}, not for model "
                f"{model.name!r} ({model.family}, width {model.context_dim})",
                field=field,
            )

    def image_encoder(self, folder: Path, device: torch.device, dtype: torch.dtype) -> Any:
        from transformers import CLIPVisionModelWithProjection

        key = (str(folder), str(device), str(dtype))
        with self._lock:
            if self._encoder is not None and self._encoder[0] == key:
                return self._encoder[1]
            self._encoder = None  # one encoder at a time: drop the old one before loading the next
        encoder: Any = CLIPVisionModelWithProjection.from_pretrained(folder, dtype=dtype)
        encoder = encoder.to(device).eval()
        with self._lock:
            self._encoder = (key, encoder)
        return encoder

    def state_dict(self, path: Path) -> dict[str, dict[str, torch.Tensor]]:
        """The adapter's tensors in the shape diffusers' ``load_ip_adapter`` takes (``image_proj``,
        ``ip_adapter``), read once per file version and kept like a LoRA file."""
        key = (str(path), path.stat().st_mtime_ns)
        with self._lock:
            if key in self._states:
                self._states.move_to_end(key)
                return self._states[key]
        state = read_adapter(path)
        with self._lock:
            self._states[key] = state
            while len(self._states) > MAX_CACHED_ADAPTERS:
                self._states.popitem(last=False)
        return state

    @contextmanager
    def applied(self, base: Any, ref: IpAdapterRef, images: list[Image.Image], kwargs: dict[str, Any]) -> Iterator[Any]:
        """A pipeline over ``base``'s modules with the adapter on at ``ref.scale``, ``kwargs`` given the
        reference images (one adapter, its list of images: ``[[a, b]]``); off again on exit."""
        from transformers import CLIPImageProcessor

        path, encoder_folder = self._find(ref.model, "ip_adapter.model")
        denoiser = base.transformer if getattr(base, "transformer", None) is not None else base.unet
        encoder = self.image_encoder(encoder_folder, denoiser.device, denoiser.dtype)
        size = int(encoder.config.image_size)
        pipe = type(base).from_pipe(base, image_encoder=encoder,
                                    feature_extractor=CLIPImageProcessor(size=size, crop_size=size))
        pipe.set_progress_bar_config(disable=True)
        # A state dict, not a path: both mixins then skip loading an encoder (ours is set already).
        pipe.load_ip_adapter(self.state_dict(path), subfolder="", weight_name=path.name)
        try:
            pipe.set_ip_adapter_scale(ref.scale)
            kwargs["ip_adapter_image"] = [[image.convert("RGB") for image in images]]
            yield pipe
        finally:
            pipe.unload_ip_adapter()


def adapter_family(header: dict[str, Any]) -> str:
    """``flux1`` for a FLUX.1 adapter (XLabs' keys, or diffusers' with biased key/value projections, which
    SD adapters lack), else ``sd``."""
    if any(key.startswith(_FLUX_PREFIXES) for key in header):
        return "flux1"
    return "flux1" if any(key.endswith("to_k_ip.bias") for key in header) else "sd"


def read_adapter(path: Path) -> dict[str, dict[str, torch.Tensor]]:
    """An adapter file as diffusers' loaders read a ``.safetensors`` one: ``image_proj.*``/
    ``ip_adapter_proj_model.*`` under ``image_proj``, ``ip_adapter.*``/``double_blocks.*`` (XLabs'
    processor names renamed to ``to_k_ip``/``to_v_ip``) under ``ip_adapter``."""
    from safetensors import safe_open

    state: dict[str, dict[str, torch.Tensor]] = {"image_proj": {}, "ip_adapter": {}}
    with safe_open(str(path), framework="pt", device="cpu") as file:
        for key in file.keys():  # noqa: SIM118 (a safe_open handle is not a mapping)
            name = key.split(".", 1)[1] if "." in key else key
            if key.startswith(("image_proj.", "ip_adapter_proj_model.")):
                state["image_proj"][name] = file.get_tensor(key)
            elif key.startswith(("ip_adapter.", "double_blocks.")):
                name = (name.replace("ip_adapter_double_stream_k_proj", "to_k_ip")
                        .replace("ip_adapter_double_stream_v_proj", "to_v_ip").replace("processor.", ""))
                state["ip_adapter"][name] = file.get_tensor(key)
    return state


def reference_images(ref: IpAdapterRef, max_pixels: int) -> list[Image.Image]:
    """The adapter's images, decoded (``InvalidImage`` naming each one's field)."""
    return [image.decode(max_pixels=max_pixels) for image in ref.images]

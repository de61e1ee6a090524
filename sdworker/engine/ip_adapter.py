"""IP-Adapter in the engine: the IP-Adapter folder, its CLIP image encoder (kept loaded) and the job's
pipeline with the adapter on.

The folder (``--ip-adapter-dir``, h94/IP-Adapter's layout) holds adapter files (``NAME.safetensors``:
``image_proj.*`` and ``ip_adapter.*`` keys) and, beside them, the CLIP vision encoder they were trained
with (``image_encoder/``, a ``CLIPVisionModelWithProjection`` folder).

Why load and unload per job: diffusers' ``load_ip_adapter`` replaces the UNet's attention processors
and adds an image projection to the UNet itself, which the model's other pipelines share; once on,
every call needs an image. So a job gets a pipeline of its own over the model's modules
(``from_pipe``, microseconds), the adapter goes on for the job and comes off in ``finally`` whatever
happens (``unload_ip_adapter`` puts plain processors back): the next job runs the untouched model, as
on a fresh worker. The adapter file is read per job (tens of MB for real ones); the image encoder,
the large part, stays loaded and is handed to each job's pipeline.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sdworker.domain.request import IpAdapterRef
from sdworker.engine.library import ModelEntry, read_safetensors_header
from sdworker.errors import InvalidRequest, IpAdapterNotFound

IP_ADAPTER_FAMILIES = frozenset({"sd1", "sd2", "sdxl"})
IMAGE_ENCODER_DIR = "image_encoder"
SUFFIX = ".safetensors"


class IpAdapters:
    """The IP-Adapter folder. ``names``/``path``/``check`` read file headers only and may run on any
    thread; ``applied`` on the engine's thread."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._encoder: tuple[tuple[str, str], Any] | None = None  # (device, dtype) -> the loaded encoder
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        if self.folder is None or not (self.folder / IMAGE_ENCODER_DIR).is_dir():
            return []
        return sorted(p.name.removesuffix(SUFFIX) for p in self.folder.glob(f"*{SUFFIX}") if p.is_file())

    def path(self, name: str, field: str) -> Path:
        if self.folder is None:
            raise IpAdapterNotFound(f"{field}: IP-Adapter {name!r}: this worker has no IP-Adapter folder "
                                    "(--ip-adapter-dir)", field=field)
        base = name.strip().removesuffix(SUFFIX)
        if not base or "/" in base or "\\" in base or base.startswith(".") or base not in self.names():
            raise IpAdapterNotFound(f"{field}: no IP-Adapter named {base!r} in the IP-Adapter folder (with its "
                                    f"image_encoder/); known: {', '.join(self.names()) or 'none'}", field=field)
        return self.folder / f"{base}{SUFFIX}"

    def check(self, ref: IpAdapterRef, model: ModelEntry, prefix: str = "ip_adapter") -> None:
        """The adapter exists and was made for ``model``'s kind of UNet (4xx naming the field)."""
        if model.family not in IP_ADAPTER_FAMILIES:
            raise InvalidRequest(f"{prefix}: IP-Adapter runs on SD 1.x, 2.x and SDXL models; {model.name!r} is "
                                 f"{model.family}", field=prefix)
        field = f"{prefix}.model"
        header = read_safetensors_header(self.path(ref.model, field))
        shape = header.get("image_proj.proj.weight", {}).get("shape")
        norm = header.get("image_proj.norm.weight", {}).get("shape")
        width = int(norm[0]) if norm else None  # the context width its tokens are made for
        if shape is not None and width is not None and model.context_dim is not None and width != model.context_dim:
            raise InvalidRequest(
                f"{field}: IP-Adapter {ref.model!r} is for a UNet of cross-attention width {width}, not for model "
                f"{model.name!r} ({model.family}, width {model.context_dim})",
                field=field,
            )

    def image_encoder(self, device: torch.device, dtype: torch.dtype) -> Any:
        from transformers import CLIPVisionModelWithProjection

        key = (str(device), str(dtype))
        with self._lock:
            if self._encoder is not None and self._encoder[0] == key:
                return self._encoder[1]
        assert self.folder is not None
        encoder: Any = CLIPVisionModelWithProjection.from_pretrained(self.folder / IMAGE_ENCODER_DIR, dtype=dtype)
        encoder = encoder.to(device).eval()
        with self._lock:
            self._encoder = (key, encoder)
        return encoder

    @contextmanager
    def applied(self, base: Any, ref: IpAdapterRef, images: list[Image.Image], kwargs: dict[str, Any]) -> Iterator[Any]:
        """A pipeline over ``base``'s modules with the adapter on at ``ref.scale``, ``kwargs`` given the
        reference images (one adapter, its list of images: ``[[a, b]]``); off again on exit."""
        from transformers import CLIPImageProcessor

        path = self.path(ref.model, "ip_adapter.model")
        unet = base.unet
        encoder = self.image_encoder(unet.device, unet.dtype)
        size = int(encoder.config.image_size)
        pipe = type(base).from_pipe(base, image_encoder=encoder,
                                    feature_extractor=CLIPImageProcessor(size=size, crop_size=size))
        pipe.set_progress_bar_config(disable=True)
        pipe.load_ip_adapter(str(path.parent), subfolder="", weight_name=path.name, image_encoder_folder=None)
        try:
            pipe.set_ip_adapter_scale(ref.scale)
            kwargs["ip_adapter_image"] = [[image.convert("RGB") for image in images]]
            yield pipe
        finally:
            pipe.unload_ip_adapter()


def reference_images(ref: IpAdapterRef, max_pixels: int) -> list[Image.Image]:
    """The adapter's images, decoded (``InvalidImage`` naming each one's field)."""
    return [image.decode(max_pixels=max_pixels) for image in ref.images]

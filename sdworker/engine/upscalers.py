"""Upscaler models: the ``--upscalers-dir`` folder (``NAME.pth`` / ``NAME.safetensors`` RRDBNet weights,
``engine.rrdbnet``) and the upscale a hires fix with ``upscaler: NAME`` runs between its passes.

``.pth`` files are read with ``torch.load(weights_only=True)``: tensors only, no pickled code runs (a
file that needs more is refused with a message, not executed). Real-ESRGAN's files nest the weights
under ``params_ema`` or ``params``; both are read.

The upscale is A1111's: run the model once (its scale, 1, 2 or 4) in float32 on the model's device,
then resize with Lanczos to the exact target size; the caller crops as for the other upscalers.
No tiling yet: a large image goes through in one piece.

Other architectures (SwinIR, HAT, DAT, Compact, ... ) load through ``spandrel`` when it is installed:
it detects them from the same state dict. It is not a dependency, because it needs a torchvision
that matches torch, which this project's CPU pin has not (docs/guided.md); without it such a file is a
4xx that says so. RRDBNet files always use our loader, so their pixels do not depend on spandrel.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sdworker.domain.hires import IMAGE_UPSCALERS
from sdworker.engine.rrdbnet import build_rrdbnet
from sdworker.errors import InvalidRequest

SUFFIXES = (".pth", ".safetensors")
Net = Callable[[torch.Tensor], torch.Tensor]  # (1, 3, H, W) in 0..1 -> (1, 3, H*scale, W*scale)


class Upscalers:
    """The upscaler folder; ``names`` on any thread, ``load``/``upscale`` on the engine's."""

    def __init__(self, folder: Path | None, max_loaded: int = 2) -> None:
        self.folder = folder
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[tuple[str, str], Net] = OrderedDict()
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        if self.folder is None or not self.folder.is_dir():
            return []
        return sorted(p.stem for p in self.folder.iterdir() if p.is_file() and p.suffix in SUFFIXES)

    def path(self, name: str, field: str) -> Path:
        known = self.names()
        if name not in known or self.folder is None:
            raise InvalidRequest(f"{field}: {name!r} is not an upscaler of this worker", field=field)
        paths = (self.folder / f"{name}{suffix}" for suffix in SUFFIXES)
        return next(path for path in paths if path.is_file())

    def load(self, name: str, device: torch.device, field: str = "hires.upscaler") -> Net:
        key = (name, str(device))
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
        path = self.path(name, field)
        try:
            state = read_weights(path)
        except ValueError as exc:
            raise InvalidRequest(f"{field}: {path.name} cannot be read ({exc})", field=field) from None
        net: Net
        try:
            net = build_rrdbnet(state).to(device)
        except (KeyError, RuntimeError, ValueError) as exc:
            why = f"not an ESRGAN/Real-ESRGAN (RRDBNet) model ({exc})"
            net = load_with_spandrel(state, device, field, f"{field}: {path.name} is {why}")
        with self._lock:
            self._loaded[key] = net
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
        return net

    def upscale(
        self, name: str, images: list[Image.Image], size: tuple[int, int], device: torch.device
    ) -> list[Image.Image]:
        """Each image through the model, then resized to ``size`` (width, height)."""
        net = self.load(name, device)
        out = []
        for image in images:
            pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
            with torch.inference_mode():
                scaled = net(pixels.permute(2, 0, 1).unsqueeze(0).to(device)).clamp(0, 1)
            array = (scaled[0].permute(1, 2, 0).cpu().numpy() * 255.0).round().astype(np.uint8)
            result = Image.fromarray(array, "RGB")
            out.append(result if result.size == size else result.resize(size, Image.Resampling.LANCZOS))
        return out


def upscale_images(
    upscalers: Upscalers, name: str, images: list[Image.Image], size: tuple[int, int], device: torch.device
) -> list[Image.Image]:
    """An ``image_upscale`` job's work: PIL's filter for the built-in names, else the model ``name``."""
    if name in IMAGE_UPSCALERS:
        resample = getattr(Image.Resampling, IMAGE_UPSCALERS[name])
        return [image.convert("RGB").resize(size, resample) for image in images]
    return upscalers.upscale(name, images, size, device)


def check_upscaler(upscalers: Upscalers, name: str, field: str = "upscaler") -> None:
    if name not in IMAGE_UPSCALERS and name not in upscalers.names():
        known = ", ".join(repr(n) for n in (*IMAGE_UPSCALERS, *upscalers.names()))
        raise InvalidRequest(f"{field}: {name!r} is not an upscaler of this worker; known: {known}", field=field)


def load_with_spandrel(state: dict[str, Any], device: torch.device, field: str, refused: str) -> Net:
    """Another architecture, through spandrel's detection, when spandrel is installed: a 3-channel
    image model only (no inpainting, no face restorers that need their own inputs). ``refused`` says
    why our own loader did not take it, the start of every error."""
    try:
        import spandrel
    except Exception:  # ImportError, or torchvision's own failure beside a torch it does not match
        raise InvalidRequest(f"{refused}; other architectures need spandrel (pip install spandrel, "
                             "with a torchvision matching torch)", field=field) from None
    try:
        descriptor = spandrel.ModelLoader(device=device).load_from_state_dict(state)
    except Exception as exc:  # spandrel.UnsupportedModelError, or a shape its loader refuses
        raise InvalidRequest(f"{refused}, and spandrel does not know it either ({exc})", field=field) from None
    if not isinstance(descriptor, spandrel.ImageModelDescriptor) or descriptor.input_channels != 3 \
            or descriptor.output_channels != 3:
        raise InvalidRequest(f"{refused}; spandrel reads it as {descriptor.architecture.name}, which is not an "
                             "RGB image-to-image model", field=field)
    descriptor.to(device).eval()
    return descriptor


def read_weights(path: Path) -> dict[str, Any]:
    """The state dict of an upscaler file (``.safetensors``, or ``.pth`` with ``weights_only``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # an unpickling error: the file holds more than tensors
        raise ValueError(f"it does not load with weights_only ({type(exc).__name__})") from None
    for key in ("params_ema", "params"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError("it holds no state dict")
    return state

"""ControlNet in the engine: the ControlNet folder, its models loaded on demand, and the diffusers
ControlNet pipeline a job with units runs.

Why a new pipeline object per job: diffusers' ControlNet pipelines are separate classes that take the
ControlNet as a component. ``Cls.from_pipe(base, controlnet=...)`` makes one over the loaded model's
very modules (no weights copied) in microseconds, and nothing of it stays on the model's own
pipelines: the job after a ControlNet job runs the untouched base pipeline, as on a fresh worker.
The ControlNet models themselves stay loaded (least recently used ones leave past ``max_loaded``),
as LoRAs stay cached.

A job's units become diffusers' arguments as a user would write them: one unit is the ControlNet
itself with its image, weight (``controlnet_conditioning_scale``) and ``control_guidance_start``/
``end``; several are a ``MultiControlNetModel`` with lists of each.
"""

from __future__ import annotations

import json
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sdworker.domain.controlnet import preprocessor_name
from sdworker.domain.request import ControlUnit, Operation
from sdworker.engine.library import ModelEntry
from sdworker.errors import ControlNetNotFound, InvalidRequest
from sdworker.imaging.control_maps import control_map

CONTROLNET_FAMILIES = frozenset({"sd1", "sd2", "sdxl"})
PIPELINES: dict[tuple[bool, Operation], str] = {
    (False, Operation.TEXT_TO_IMAGE): "StableDiffusionControlNetPipeline",
    (False, Operation.IMAGE_TO_IMAGE): "StableDiffusionControlNetImg2ImgPipeline",
    (False, Operation.INPAINT): "StableDiffusionControlNetInpaintPipeline",
    (True, Operation.TEXT_TO_IMAGE): "StableDiffusionXLControlNetPipeline",
    (True, Operation.IMAGE_TO_IMAGE): "StableDiffusionXLControlNetImg2ImgPipeline",
    (True, Operation.INPAINT): "StableDiffusionXLControlNetInpaintPipeline",
}


@dataclass(frozen=True, slots=True)
class ControlNetEntry:
    name: str
    path: Path
    context_dim: int | None  # the cross-attention width it was trained against (its UNet's)


class ControlNets:
    """The ControlNet folder (diffusers ``ControlNetModel`` folders, one per name) and the loaded models.
    ``names``/``entry``/``check_fits`` read configs only and may run on any thread; ``load`` on the
    engine's thread."""

    def __init__(self, folder: Path | None, max_loaded: int = 4) -> None:
        self.folder = folder
        self.max_loaded = max_loaded
        self._loaded: OrderedDict[tuple[str, str, str], Any] = OrderedDict()
        self._lock = threading.Lock()

    def names(self) -> list[str]:
        if self.folder is None or not self.folder.is_dir():
            return []
        return sorted(p.name for p in self.folder.iterdir() if (p / "config.json").is_file())

    def entry(self, name: str, field: str) -> ControlNetEntry:
        base = name.strip()
        if " [" in base and base.endswith("]"):  # A1111 lists models as "name [hash]"
            base = base[: base.rindex(" [")]
        if self.folder is None:
            raise ControlNetNotFound(f"{field}: ControlNet {name!r}: this worker has no ControlNet folder "
                                     "(--controlnet-dir)", field=field)
        if not base or "/" in base or "\\" in base or base.startswith(".") or base not in self.names():
            raise ControlNetNotFound(f"{field}: no ControlNet named {base!r} in the ControlNet folder; "
                                     f"known: {', '.join(self.names()) or 'none'}", field=field)
        path = self.folder / base
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
        width = config.get("cross_attention_dim")
        return ControlNetEntry(base, path, width if isinstance(width, int) else None)

    def check_units(self, units: tuple[ControlUnit, ...], model: ModelEntry, prefix: str = "controlnet") -> None:
        """Every unit names a ControlNet of the folder, made for ``model``'s kind of UNet, and a
        preprocessor this worker has (4xx naming the unit's field)."""
        if units and model.family not in CONTROLNET_FAMILIES:
            raise InvalidRequest(f"{prefix}: ControlNet runs on SD 1.x, 2.x and SDXL models; {model.name!r} is "
                                 f"{model.family}", field=prefix)
        for index, unit in enumerate(units):
            field = f"{prefix}.{index}.model"
            entry = self.entry(unit.model, field)
            widths = (entry.context_dim, model.context_dim)
            if None not in widths and widths[0] != widths[1]:
                raise InvalidRequest(
                    f"{field}: ControlNet {entry.name!r} is for a UNet of cross-attention width {entry.context_dim}, "
                    f"not for model {model.name!r} ({model.family}, width {model.context_dim})",
                    field=field,
                )
            preprocessor_name(unit.preprocessor, f"{prefix}.{index}.preprocessor")

    def load(self, name: str, device: torch.device, dtype: torch.dtype) -> Any:
        from diffusers import ControlNetModel

        key = (name, str(device), str(dtype))
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
        assert self.folder is not None
        model = ControlNetModel.from_pretrained(self.folder / name, torch_dtype=dtype).to(device)
        model.eval()
        with self._lock:
            self._loaded[key] = model
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
        return model


def control_images(units: tuple[ControlUnit, ...], max_pixels: int) -> list[Image.Image]:
    """Each unit's control map: its image decoded (``InvalidImage`` naming the unit's field) and run
    through its preprocessor."""
    maps = []
    for unit in units:
        image = unit.image.decode(max_pixels=max_pixels)
        maps.append(control_map(image, preprocessor_name(unit.preprocessor, unit.image.field), unit.low, unit.high))
    return maps


def controlnet_call(
    base: Any, xl: bool, operation: Operation, nets: list[Any], maps: list[Image.Image],
    units: tuple[ControlUnit, ...], kwargs: dict[str, Any],
) -> tuple[Any, dict[str, Any]]:
    """The ControlNet pipeline over ``base``'s modules and the job's arguments with the units added."""
    import diffusers
    from diffusers.models.controlnets import MultiControlNetModel

    cls = getattr(diffusers, PIPELINES[(xl, operation)])
    one = len(nets) == 1
    pipe = cls.from_pipe(base, controlnet=nets[0] if one else MultiControlNetModel(nets))
    pipe.set_progress_bar_config(disable=True)
    image_argument = "image" if operation is Operation.TEXT_TO_IMAGE else "control_image"
    kwargs = {
        **kwargs,
        image_argument: maps[0] if one else maps,
        "controlnet_conditioning_scale": units[0].weight if one else [u.weight for u in units],
        "control_guidance_start": units[0].start if one else [u.start for u in units],
        "control_guidance_end": units[0].end if one else [u.end for u in units],
    }
    return pipe, kwargs

"""ControlNet in the engine: the ControlNet folder, its models loaded on demand, and the diffusers
ControlNet pipeline a job with units runs.

Which family a ControlNet is for is a fact of its folder: ``config.json``'s ``_class_name`` names
diffusers' class (``ControlNetModel``: SD 1.x/2.x/SDXL, told apart by the cross-attention width;
``ControlNetUnionModel``: SDXL's union ControlNet; ``FluxControlNetModel``: FLUX.1; ``SD3ControlNetModel``:
SD 3.5; ``QwenImageControlNetModel``: Qwen-Image; ``ZImageControlNetModel``: Z-Image). A unit whose
ControlNet is for another family is a 4xx naming the unit's ``model`` field before anything loads.

Why a new pipeline object per job: diffusers' ControlNet pipelines are separate classes that take the
ControlNet as a component. ``Cls.from_pipe(base, controlnet=...)`` makes one over the loaded model's
very modules (no weights copied) in microseconds, and nothing of it stays on the model's own
pipelines: the job after a ControlNet job runs the untouched base pipeline, as on a fresh worker.
The ControlNet models themselves stay loaded (least recently used ones leave past ``max_loaded``),
as LoRAs stay cached.

A job's units become diffusers' arguments as a user would write them: one unit is the ControlNet
itself with its image, weight (``controlnet_conditioning_scale``) and ``control_guidance_start``/
``end``; several are a ``MultiControlNetModel`` (``FluxMultiControlNetModel``,
``SD3MultiControlNetModel``) with lists of each. A FLUX.1 union ControlNet (its config has
``num_mode``) takes a ``control_mode`` per unit, diffusers' argument of that name.

SDXL's union ControlNet (``ControlNetUnionModel``, xinsir's controlnet-union; ``num_control_type`` modes)
runs every map in one forward of one model: the units all name it, and diffusers' union pipelines get
lists of maps, modes, weights and start/end, one entry per unit. Z-Image's ControlNet pipeline takes
one control image with a weight and acts on every step: one unit, start 0 and end 1.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections import OrderedDict
from collections.abc import Iterator
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


@dataclass(frozen=True, slots=True)
class ControlNetKind:
    """One diffusers ControlNet class: the families it steers, its multi-unit wrapper and its pipelines."""

    label: str
    families: frozenset[str]
    multi: str  # the class that runs several units (module diffusers.models.controlnets)
    pipelines: dict[tuple[str, Operation], str]  # (family, operation) -> pipeline class
    one_net: bool = False  # several units share one (union) ControlNet, each with its own image
    max_units: int = 4
    steps_window: bool = True  # the pipeline takes control_guidance_start/end
    modes_key: str = "num_mode"  # the config key of a union ControlNet's number of modes


_SD_PIPELINES = {
    (family, operation): f"StableDiffusion{'XL' if family == 'sdxl' else ''}ControlNet{suffix}Pipeline"
    for family in ("sd1", "sd2", "sdxl")
    for operation, suffix in ((Operation.TEXT_TO_IMAGE, ""), (Operation.IMAGE_TO_IMAGE, "Img2Img"),
                              (Operation.INPAINT, "Inpaint"))
}
KINDS: dict[str, ControlNetKind] = {
    "ControlNetModel": ControlNetKind("SD 1.x/2.x/SDXL", frozenset({"sd1", "sd2", "sdxl"}), "MultiControlNetModel",
                                      _SD_PIPELINES),
    "FluxControlNetModel": ControlNetKind("FLUX.1", frozenset({"flux1"}), "FluxMultiControlNetModel", {
        ("flux1", Operation.TEXT_TO_IMAGE): "FluxControlNetPipeline",
        ("flux1", Operation.IMAGE_TO_IMAGE): "FluxControlNetImg2ImgPipeline",
        ("flux1", Operation.INPAINT): "FluxControlNetInpaintPipeline",
    }),
    # as SD 3.5: diffusers' Qwen-Image ControlNet inpaint pipeline is for a ControlNet trained with the mask
    # diffusers' Qwen-Image multi-ControlNet runs one ControlNet (the published one is a union that reads the
    # kind of map from the image) over several images, so a job's units all name the same one
    "QwenImageControlNetModel": ControlNetKind(
        "Qwen-Image", frozenset({"qwenimage"}), "QwenImageMultiControlNetModel",
        {("qwenimage", Operation.TEXT_TO_IMAGE): "QwenImageControlNetPipeline"}, one_net=True,
    ),
    # diffusers' SD 3 inpainting ControlNet pipeline is for a ControlNet trained with the mask as an extra
    # input, not for an inpainting job with any ControlNet: SD 3.5 ControlNet jobs are text-to-image.
    "SD3ControlNetModel": ControlNetKind("SD 3.5", frozenset({"sd3"}), "SD3MultiControlNetModel", {
        ("sd3", Operation.TEXT_TO_IMAGE): "StableDiffusion3ControlNetPipeline",
    }),
    # one ControlNetUnionModel takes all of a job's maps in one forward (diffusers' lists, one per unit)
    "ControlNetUnionModel": ControlNetKind("SDXL union", frozenset({"sdxl"}), "MultiControlNetUnionModel", {
        ("sdxl", operation): f"StableDiffusionXLControlNetUnion{suffix}Pipeline"
        for operation, suffix in ((Operation.TEXT_TO_IMAGE, ""), (Operation.IMAGE_TO_IMAGE, "Img2Img"),
                                  (Operation.INPAINT, "Inpaint"))
    }, one_net=True, modes_key="num_control_type"),
    # diffusers' Z-Image inpaint ControlNet pipeline needs a ControlNet that reads the mask and the masked
    # image (Z-Image-Turbo-Fun-Controlnet-Union-2.0: control_in_dim 33); its pipeline refuses others
    "ZImageControlNetModel": ControlNetKind("Z-Image", frozenset({"zimage"}), "", {
        ("zimage", Operation.TEXT_TO_IMAGE): "ZImageControlNetPipeline",
        ("zimage", Operation.INPAINT): "ZImageControlNetInpaintPipeline",
    }, max_units=1, steps_window=False),
}
CONTROLNET_FAMILIES = frozenset().union(*(kind.families for kind in KINDS.values()))
LATENT_CHANNELS = {"zimage": 16}
# pipelines of their own, none with ControlNet
NO_CONTROLNET_VARIANTS = {("flux1", "fill"), ("flux1", "kontext"), ("qwenimage", "edit"), ("qwenimage", "edit-plus")}


@dataclass(frozen=True, slots=True)
class ControlNetEntry:
    name: str
    path: Path
    context_dim: int | None  # the cross-attention width it was trained against (its UNet's)
    kind: str = "ControlNetModel"  # diffusers' class, a key of KINDS
    num_modes: int | None = None  # a union ControlNet's number of control modes
    control_in_dim: int | None = None  # Z-Image: the control input's channels (33: reads mask and masked image)


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
        kind = str(config.get("_class_name", "ControlNetModel"))
        if kind not in KINDS:
            raise InvalidRequest(f"{field}: ControlNet {base!r} is a {kind}; this worker runs "
                                 f"{', '.join(KINDS)}", field=field)
        modes = config.get(KINDS[kind].modes_key)
        channels = config.get("control_in_dim")
        return ControlNetEntry(base, path, width if isinstance(width, int) else None, kind,
                               modes if isinstance(modes, int) else None,
                               channels if isinstance(channels, int) else None)

    def check_units(self, units: tuple[ControlUnit, ...], model: ModelEntry,
                    operation: Operation = Operation.TEXT_TO_IMAGE, prefix: str = "controlnet") -> None:
        """Every unit names a ControlNet of the folder, made for ``model``'s family (and kind of UNet),
        a control mode where the ControlNet is a union one, and a preprocessor this worker has (4xx naming
        the unit's field)."""
        unfit = model.family not in CONTROLNET_FAMILIES or (model.family, model.variant) in NO_CONTROLNET_VARIANTS
        if units and unfit:
            labels = ", ".join(kind.label for kind in KINDS.values())
            raise InvalidRequest(f"{prefix}: ControlNet runs on {labels} models; {model.name!r} is "
                                 f"{model.family} {model.variant}".rstrip(), field=prefix)
        for index, unit in enumerate(units):
            field = f"{prefix}.{index}.model"
            entry = self.entry(unit.model, field)
            kind = KINDS[entry.kind]
            if model.family not in kind.families:
                raise InvalidRequest(f"{field}: ControlNet {entry.name!r} is a {kind.label} ControlNet, not for model "
                                     f"{model.name!r} ({model.family})", field=field)
            if (model.family, operation) not in kind.pipelines:
                runs = " and ".join(sorted({op.value for family, op in kind.pipelines if family == model.family}))
                raise InvalidRequest(f"{prefix}: ControlNet on {kind.label} runs {runs} only, not "
                                     f"{operation.value}", field=prefix)
            if index and entry.kind != self.entry(units[0].model, f"{prefix}.0.model").kind:
                raise InvalidRequest(f"{field}: ControlNet {entry.name!r} is a {kind.label} ControlNet and unit 0's "
                                     "is not: a job's units use one kind of ControlNet", field=field)
            if index >= kind.max_units:
                raise InvalidRequest(f"{prefix}: {kind.label} ControlNet takes {kind.max_units} unit(s) per job "
                                     f"(diffusers' pipeline takes one control image)", field=prefix)
            if not kind.steps_window and (unit.start, unit.end) != (0.0, 1.0):
                bad = "start" if unit.start != 0.0 else "end"
                raise InvalidRequest(f"{prefix}.{index}.{bad}: {kind.label} ControlNet acts on every step "
                                     "(diffusers' pipeline takes no start/end): start 0 and end 1",
                                     field=f"{prefix}.{index}.{bad}")
            if (entry.kind == "ZImageControlNetModel" and operation is Operation.INPAINT
                    and entry.control_in_dim in (None, LATENT_CHANNELS["zimage"])):
                raise InvalidRequest(f"{field}: ControlNet {entry.name!r} reads a control map only; Z-Image "
                                     "inpainting with ControlNet needs one that also reads the mask and the masked "
                                     "image (control_in_dim 33, Z-Image-Turbo-Fun-Controlnet-Union-2.0)", field=field)
            if kind.one_net and entry.name != self.entry(units[0].model, f"{prefix}.0.model").name:
                raise InvalidRequest(f"{field}: {kind.label} runs several units on one ControlNet; unit 0 names "
                                     f"{units[0].model!r}", field=field)
            self._check_mode(entry, unit, f"{prefix}.{index}.control_mode")
            widths = (entry.context_dim, model.context_dim)
            if None not in widths and widths[0] != widths[1]:
                raise InvalidRequest(
                    f"{field}: ControlNet {entry.name!r} is for a UNet of cross-attention width {entry.context_dim}, "
                    f"not for model {model.name!r} ({model.family}, width {model.context_dim})",
                    field=field,
                )
            preprocessor_name(unit.preprocessor, f"{prefix}.{index}.preprocessor")

    @staticmethod
    def _check_mode(entry: ControlNetEntry, unit: ControlUnit, field: str) -> None:
        """A union ControlNet needs a mode per unit (diffusers fails without one); another takes none."""
        if entry.num_modes is None:
            if unit.mode is not None:
                raise InvalidRequest(f"{field}: ControlNet {entry.name!r} is not a union ControlNet; it takes no "
                                     "control mode", field=field)
        elif unit.mode is None or not 0 <= unit.mode < entry.num_modes:
            raise InvalidRequest(f"{field}: ControlNet {entry.name!r} is a union ControlNet: give a control mode "
                                 f"in 0..{entry.num_modes - 1} (got {unit.mode})", field=field)

    def load(self, entry: ControlNetEntry, device: torch.device, dtype: torch.dtype) -> Any:
        import diffusers

        name = entry.name
        key = (name, str(device), str(dtype))
        with self._lock:
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
        assert self.folder is not None
        model = getattr(diffusers, entry.kind).from_pretrained(self.folder / name, torch_dtype=dtype).to(device)
        model.eval()
        with self._lock:
            self._loaded[key] = model
            while len(self._loaded) > self.max_loaded:
                self._loaded.popitem(last=False)
        return model


def control_images(
    units: tuple[ControlUnit, ...], max_pixels: int, size: tuple[int, int] | None = None
) -> list[Image.Image]:
    """Each unit's control map: its image decoded (``InvalidImage`` naming the unit's field) and run
    through its preprocessor. With ``size`` (the hires fix's second pass), an image with a preprocessor
    is resized to it first and preprocessed there, as sd-webui-controlnet runs the preprocessor again at
    the larger size: canny's edges at the resolution the pass paints (thin, as at the first pass), not
    the first pass's edges stretched. A ``none`` map is left to the pipeline's own resize (the same
    Lanczos resize, done once)."""
    maps = []
    for unit in units:
        image = unit.image.decode(max_pixels=max_pixels)
        name = preprocessor_name(unit.preprocessor, unit.image.field)
        if size is not None and name != "none" and image.size != size:
            image = image.convert("RGB").resize(size, Image.Resampling.LANCZOS)
        maps.append(control_map(image, name, unit.low, unit.high))
    return maps


def controlnet_call(
    base: Any, family: str, operation: Operation, kind: str, nets: list[Any], maps: list[Image.Image],
    units: tuple[ControlUnit, ...], kwargs: dict[str, Any],
) -> tuple[Any, dict[str, Any]]:
    """The ControlNet pipeline over ``base``'s modules and the job's arguments with the units added.
    ``kind``: the units' ControlNet class (``check_units`` made them all of ``family``'s one kind)."""
    import diffusers
    from diffusers.models import controlnets

    spec = KINDS[kind]
    name = spec.pipelines.get((family, operation))
    if name is None:  # check_request let it through, the family cannot
        raise InvalidRequest(f"controlnet: ControlNet on {spec.label} runs text_to_image only, not "
                             f"{operation.value}", field="controlnet")
    cls = getattr(diffusers, name)
    if kind == "ControlNetUnionModel":  # one model, lists of everything (module docstring)
        pipe = cls.from_pipe(base, controlnet=nets[0])
        pipe.set_progress_bar_config(disable=True)
        return pipe, {**kwargs, "control_image": list(maps), "control_mode": [u.mode for u in units],
                      "controlnet_conditioning_scale": [u.weight for u in units],
                      "control_guidance_start": [u.start for u in units],
                      "control_guidance_end": [u.end for u in units]}
    if kind == "ZImageControlNetModel":  # one unit, every step
        pipe = cls.from_pipe(base, controlnet=nets[0])
        pipe.set_progress_bar_config(disable=True)
        kwargs = {**kwargs, "control_image": maps[0], "controlnet_conditioning_scale": units[0].weight}
        kwargs.pop("strength", None)  # the inpaint pipeline starts from noise; the mask steers through the net
        return pipe, kwargs
    one = len(nets) == 1
    multi = getattr(controlnets, spec.multi)(nets[:1] if spec.one_net else nets)
    pipe = cls.from_pipe(base, controlnet=nets[0] if one else multi)
    pipe.set_progress_bar_config(disable=True)
    sd_text = kind == "ControlNetModel" and operation is Operation.TEXT_TO_IMAGE
    image_argument = "image" if sd_text else "control_image"
    kwargs = {
        **kwargs,
        image_argument: maps[0] if one else maps,
        "controlnet_conditioning_scale": units[0].weight if one else [u.weight for u in units],
        "control_guidance_start": units[0].start if one else [u.start for u in units],
        "control_guidance_end": units[0].end if one else [u.end for u in units],
    }
    if any(u.mode is not None for u in units):
        kwargs["control_mode"] = units[0].mode if one else [u.mode for u in units]
    return pipe, kwargs


@contextlib.contextmanager
def seeded_global_rng(pipe: Any, seed: int, device: torch.device) -> Iterator[None]:
    """Around a pipeline call: for diffusers' SD 3 ControlNet pipeline, torch's global RNG seeded with the
    job's seed, and restored after.

    Why: that pipeline encodes the control image with ``vae.encode(...).latent_dist.sample()`` without
    the job's generator, so it draws from the global RNG and the same seed would make another image on
    every call. Seeded here, a job's pixels depend on its seed alone (and equal diffusers called after
    ``torch.manual_seed(seed)``); nothing else's random stream moves.
    """
    if type(pipe).__name__ != "StableDiffusion3ControlNetPipeline":
        yield
        return
    devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield

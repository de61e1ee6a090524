"""The sd-webui-controlnet extension's side of the A1111 door: ``alwayson_scripts.controlnet.args``
(the fields ``webuiapi.ControlNetUnit`` sends) as the job's ControlNet units, and the extension's
``/controlnet/model_list``, ``/controlnet/module_list`` and ``/controlnet/detect``.

A unit's image is fitted to the job's size by its ``resize_mode`` (the extension's names and A1111's
numbers: Just Resize, Crop and Resize, Resize and Fill) before the job is queued; the preprocessor
(``module``) runs in the engine. ``threshold_a``/``threshold_b`` are canny's thresholds, as in the
extension. What a unit asks that we do not do (a unit mask, a control mode other than Balanced,
pixel-perfect resolution) is named in ``info.ignored``.

A union ControlNet's mode comes in the unit's ``union_control_type`` (the extension's
``ControlNetUnionControlType``, which newer ``webuiapi.ControlNetUnit``s send by its value: "OpenPose",
"Depth", "Soft Edge", "Hard Edge", "Normal Map", "Segmentation", and webuiapi's "Tile", "Inpaint"). The
extension encodes it as the member's index, which is xinsir's SDXL union table (0 openpose .. 5
segment, 6 tile, 7 repaint): that index becomes the native unit's ``control_mode``. An integer is taken
as the mode itself (a FLUX union ControlNet's numbers are its model card's, not xinsir's). "Unknown"
or no field is no mode; the A1111 ``control_mode`` (Balanced, My prompt..., ControlNet...) is another
thing (it weighs prompt against map) and stays ignored.

IP-Adapter travels the same way in the extension: a unit whose ``module`` is an ``ip-adapter*``
preprocessor (``ip-adapter_clip_sd15``, ``ip-adapter_clip_h``, ``ip-adapter-auto``) and whose ``model``
names the adapter. Such a unit becomes the job's native ``ip_adapter`` (the unit's image as a reference
image, given as it is: the adapter's CLIP processor resizes it; ``weight`` as the scale). Several units
on the same adapter are its several images; what the native field cannot carry (a second adapter,
start/end other than 0/1, a second weight) is named in ``info.ignored``. FaceID modules need
insightface's face model: a 4xx naming the unit's ``module``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field

from sdworker.api import deps
from sdworker.api.control_preview import control_map_base64
from sdworker.domain.controlnet import MAX_UNITS, PREPROCESSORS, check_units, preprocessor_name
from sdworker.domain.request import ControlUnit, InputImage, IpAdapterRef
from sdworker.errors import ControlNetNotFound, InvalidRequest, IpAdapterNotFound
from sdworker.imaging.decode import decode_base64
from sdworker.imaging.masks import fit_image

router = APIRouter(prefix="/controlnet", tags=["automatic1111"])
RESIZE_MODES = {"just resize": 0, "crop and resize": 1, "resize and fill": 2, "0": 0, "1": 1, "2": 2}
PREFIX = "alwayson_scripts.controlnet.args"
IP_ADAPTER_MODULE = "ip-adapter"  # the extension's IP-Adapter preprocessors all start so
IP_ADAPTER_MODULES = ("ip-adapter-auto", "ip-adapter_clip_sd15", "ip-adapter_clip_h")  # listed when one exists
MAX_IP_IMAGES = 4  # the native ip_adapter.images bound
# a native unit's field -> the extension's name for it
DOOR_FIELDS = {"control_mode": "union_control_type", "preprocessor": "module", "start": "guidance_start",
               "end": "guidance_end"}
# sd-webui-controlnet's ControlNetUnionControlType (values, and the tags its from_str reads) -> its index
UNION_CONTROL_TYPES = {
    "openpose": 0, "depth": 1, "soft edge": 2, "softedge": 2, "scribble": 2, "hard edge": 3, "canny": 3,
    "lineart": 3, "mlsd": 3, "normal map": 4, "normalmap": 4, "normal": 4, "segmentation": 5, "tile": 6,
    "blur": 6, "inpaint": 7,
}


class ControlNetArg(BaseModel):
    """One unit as sd-webui-controlnet's API takes it (unknown fields ignored, as the extension does)."""

    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    enabled: bool = True
    image: str | dict[str, Any] | None = None
    input_image: str | None = None  # the extension's older name
    mask: str | None = None
    module: str = "none"
    model: str = "None"
    weight: float = 1.0
    resize_mode: str | int = "Crop and Resize"
    processor_res: int = 512
    threshold_a: float = -1
    threshold_b: float = -1
    guidance_start: float = 0.0
    guidance_end: float = 1.0
    control_mode: str | int = "Balanced"
    pixel_perfect: bool = False
    hr_option: str = "Both"  # which hires pass the unit acts on
    union_control_type: str | int | None = None  # a union ControlNet's mode (module docstring)


def controlnet_args(alwayson_scripts: dict[str, Any]) -> list[dict[str, Any]]:
    """The extension's args, whatever the key's case (webuiapi sends ``ControlNet``)."""
    for key, value in alwayson_scripts.items():
        if key.lower() == "controlnet" and isinstance(value, dict) and isinstance(value.get("args"), list):
            return [arg for arg in value["args"] if isinstance(arg, dict)]
    return []


@dataclass(frozen=True, slots=True)
class Guidance:
    """What the extension's units ask of the job: its ControlNet units and its IP-Adapter, and the notes
    for ``info.ignored`` (each also a warning of the job)."""

    units: tuple[ControlUnit, ...] = ()
    ip_adapter: IpAdapterRef | None = None
    notes: dict[str, str] = dataclass_field(default_factory=dict)
    fields: tuple[str, ...] = ()  # each unit's door field (``...args.N``: disabled and IP-Adapter units skipped)

    def door_error(self, error: InvalidRequest) -> InvalidRequest:
        """An error the job's checks raised about a native unit field (``controlnet.N.control_mode``),
        named as the client sent it (``alwayson_scripts.controlnet.args.M.union_control_type``)."""
        parts = (error.field or "").split(".")
        if len(parts) != 3 or parts[0] != "controlnet" or not parts[1].isdigit() or int(parts[1]) >= len(self.fields):
            return error
        field = f"{self.fields[int(parts[1])]}.{DOOR_FIELDS.get(parts[2], parts[2])}"
        message = error.message.replace(error.field or "", field, 1)
        return type(error)(message, field=field)


async def units_from(
    alwayson_scripts: dict[str, Any], size: tuple[int, int], known: tuple[str, ...], max_pixels: int,
    ip_adapters: tuple[str, ...] = (), *, hires: bool = False,
) -> Guidance:
    """The enabled units as the job's ControlNet units (images fitted to ``size``) and IP-Adapter (units
    whose module is an ``ip-adapter`` preprocessor, or whose model is one of ``ip_adapters``), and the
    notes for ``info.ignored``. 4xx naming ``alwayson_scripts.controlnet.args.N.<field>`` for a bad unit."""
    units: list[ControlUnit] = []
    fields: list[str] = []
    adapter: list[tuple[str, ControlNetArg, str]] = []  # (field, unit, image) of the IP-Adapter units
    notes: dict[str, str] = {}
    for index, raw in enumerate(controlnet_args(alwayson_scripts)):
        arg = ControlNetArg.model_validate(raw)
        field = f"{PREFIX}.{index}"
        if not arg.enabled:
            continue
        name = _model_name(arg.model)
        image = arg.image.get("image") if isinstance(arg.image, dict) else arg.image or arg.input_image
        if not isinstance(image, str) or not image:
            raise InvalidRequest(f"{field}.image: a unit needs a control image (base64)", field=f"{field}.image")
        if arg.module.strip().lower().startswith(IP_ADAPTER_MODULE) or (name is not None and name in ip_adapters):
            adapter.append((field, arg, image))
            continue
        if name is None or name not in known:
            raise ControlNetNotFound(f"{field}.model: no ControlNet {arg.model!r} here; known: "
                                     f"{', '.join(known) or 'none'}", field=f"{field}.model")
        mode = RESIZE_MODES.get(str(arg.resize_mode).strip().lower())
        if mode is None:
            raise InvalidRequest(f"{field}.resize_mode: {arg.resize_mode!r} is not one of Just Resize, Crop and "
                                 "Resize, Resize and Fill", field=f"{field}.resize_mode")
        data = decode_base64(image, field=f"{field}.image")
        fitted = await asyncio.to_thread(fit_image, data, size, mode, field=f"{field}.image", max_pixels=max_pixels)
        module = preprocessor_name(arg.module, f"{field}.module")
        low = arg.threshold_a if arg.threshold_a >= 0 else 100.0
        high = arg.threshold_b if arg.threshold_b >= 0 else 200.0
        units.append(ControlUnit(name, InputImage(fitted, f"{field}.image"), arg.weight, arg.guidance_start,
                                 arg.guidance_end, module, low, high, _union_mode(arg, field)))
        fields.append(field)
        for what, is_set in (("mask", bool(arg.mask)), ("control_mode", str(arg.control_mode) not in ("Balanced", "0")),
                             ("pixel_perfect", arg.pixel_perfect), ("hr_option", hires and arg.hr_option != "Both")):
            if is_set:
                notes[f"{field}.{what}"] = "not supported by sdworker; ignored"
    made = tuple(units)
    check_units(made, PREFIX) if len(made) <= MAX_UNITS else check_units(made, "alwayson_scripts.controlnet")
    return Guidance(made, _ip_adapter(adapter, ip_adapters, notes, hires), notes, tuple(fields))


def _ip_adapter(
    adapter: list[tuple[str, ControlNetArg, str]], known: tuple[str, ...], notes: dict[str, str], hires: bool
) -> IpAdapterRef | None:
    """The IP-Adapter units as the native ``ip_adapter``: the first unit's adapter and weight, the
    images of every unit on that adapter; the rest noted (``notes``) as not applied."""
    if not adapter:
        return None
    chosen: str | None = None
    scale = 1.0
    images: list[InputImage] = []
    for field, arg, image in adapter:
        module = arg.module.strip().lower()
        if "face_id" in module or "faceid" in module:
            raise InvalidRequest(f"{field}.module: {arg.module!r} needs insightface's face model, which sdworker "
                                 "does not run; use ip-adapter_clip_sd15 (or _h) with a plain IP-Adapter",
                                 field=f"{field}.module")
        name = _model_name(arg.model)
        if name is None or name not in known:
            raise IpAdapterNotFound(f"{field}.model: no IP-Adapter {arg.model!r} here (--ip-adapter-dir); known: "
                                    f"{', '.join(known) or 'none'}", field=f"{field}.model")
        if not 0.0 <= arg.weight <= 2.0:
            raise InvalidRequest(f"{field}.weight: {arg.weight} is not in 0..2", field=f"{field}.weight")
        if chosen is None:
            chosen, scale = name, arg.weight
        if name != chosen:
            notes[f"{field}.model"] = f"a second IP-Adapter ({name}) in one job is not supported; unit not applied"
            continue
        if len(images) == MAX_IP_IMAGES:
            notes[f"{field}.image"] = f"more than {MAX_IP_IMAGES} IP-Adapter images; unit not applied"
            continue
        if arg.weight != scale:
            notes[f"{field}.weight"] = f"one weight per IP-Adapter; the first unit's ({scale:g}) applies"
        if (arg.guidance_start, arg.guidance_end) != (0.0, 1.0):
            notes[f"{field}.guidance_start"] = "IP-Adapter acts on every step in sdworker; start/end ignored"
        if arg.mask:
            notes[f"{field}.mask"] = "not supported by sdworker; ignored"
        if hires and arg.hr_option != "Both":
            notes[f"{field}.hr_option"] = "the unit acts on both hires passes in sdworker; ignored"
        images.append(InputImage(image, f"{field}.image"))
    assert chosen is not None
    return IpAdapterRef(chosen, tuple(images), scale)


def _union_mode(arg: ControlNetArg, field: str) -> int | None:
    """The unit's ``union_control_type`` as a mode index (module docstring); 4xx naming it if unknown."""
    value = arg.union_control_type
    if value is None or isinstance(value, int):
        return value
    text = value.strip().lower()
    if text in ("", "unknown"):
        return None
    if text.isdigit():
        return int(text)
    if text not in UNION_CONTROL_TYPES:
        raise InvalidRequest(f"{field}.union_control_type: {value!r} is not one of OpenPose, Depth, Soft Edge, "
                             "Hard Edge, Normal Map, Segmentation, Tile, Inpaint, Unknown (or a mode number)",
                             field=f"{field}.union_control_type")
    return UNION_CONTROL_TYPES[text]


def _model_name(model: str) -> str | None:
    """The extension lists models as ``name [hash]``; "None" is no model."""
    name = model.strip()
    if " [" in name and name.endswith("]"):
        name = name[: name.rindex(" [")]
    return None if not name or name == "None" else name


class DetectRequest(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)

    controlnet_module: str = "none"
    controlnet_input_images: list[str] = Field(default_factory=list)
    controlnet_images: list[str] = Field(default_factory=list)  # webuiapi's name
    controlnet_processor_res: int = 512
    controlnet_threshold_a: float = -1
    controlnet_threshold_b: float = -1


@router.get("/model_list", summary="ControlNets of --controlnet-dir and IP-Adapters of --ip-adapter-dir, as "
            "sd-webui-controlnet lists both")
async def model_list(request: Request) -> dict[str, Any]:
    fleet = await deps.service(request).fleet()
    return {"model_list": [*fleet.controlnets, *fleet.ip_adapters]}


@router.get("/module_list", summary="Preprocessors this worker runs (none needs model weights), and the "
            "IP-Adapter modules when it has an IP-Adapter")
async def module_list(request: Request) -> dict[str, Any]:
    adapters = IP_ADAPTER_MODULES if (await deps.service(request).fleet()).ip_adapters else ()
    return {"module_list": [*PREPROCESSORS, *adapters], "module_detail": {}}


@router.post("/detect", summary="Run a preprocessor on images: the control maps a unit would use")
async def detect(body: DetectRequest, request: Request) -> dict[str, Any]:
    max_pixels = deps.settings(request).max_pixels
    module = preprocessor_name(body.controlnet_module, "controlnet_module")
    images = body.controlnet_input_images or body.controlnet_images
    low = body.controlnet_threshold_a if body.controlnet_threshold_a >= 0 else 100.0
    high = body.controlnet_threshold_b if body.controlnet_threshold_b >= 0 else 200.0

    encoded = [
        await control_map_base64(text, module, low, high, field=f"controlnet_input_images.{index}",
                                 module_field="controlnet_module", max_pixels=max_pixels)
        for index, text in enumerate(images)
    ]
    return {"images": encoded, "info": "Success"}

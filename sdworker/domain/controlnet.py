"""ControlNet units of a job: each a ControlNet model (by name, from ``--controlnet-dir``), a control
image, a weight and the fraction of the steps it acts on, and a preprocessor that turns the image into
a control map first. Torch-free; the preprocessors are in ``sdworker.imaging.control_maps``.

Preprocessors here need no model weights: ``none`` (the image already is a control map), ``canny``
(OpenCV's edge detector, thresholds ``low``/``high``: A1111's ``threshold_a``/``threshold_b``),
``invert`` (white lines on black from a drawing's black lines on white), ``threshold`` (a black and
white map at ``low``). Names as sd-webui-controlnet spells them.
"""

from __future__ import annotations

from sdworker.domain.request import ControlUnit
from sdworker.errors import InvalidRequest

PREPROCESSORS: tuple[str, ...] = ("none", "canny", "invert", "threshold")
# sd-webui-controlnet's other spellings of the same modules
PREPROCESSOR_ALIASES = {"invert (from white bg & black line)": "invert", "binary": "threshold"}
MAX_UNITS = 4


def preprocessor_name(name: str, field: str) -> str:
    """The preprocessor's canonical name, or a 4xx naming ``field`` (those needing weights included)."""
    key = PREPROCESSOR_ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in PREPROCESSORS:
        raise InvalidRequest(
            f"{field}: preprocessor {name!r} is not available on this worker (it needs model weights or is "
            f"unknown); available: {', '.join(PREPROCESSORS)}",
            field=field,
        )
    return key


def check_units(units: tuple[ControlUnit, ...], prefix: str = "controlnet") -> None:
    if len(units) > MAX_UNITS:
        raise InvalidRequest(f"{prefix}: {len(units)} units; at most {MAX_UNITS}", field=prefix)
    for index, unit in enumerate(units):
        field = f"{prefix}.{index}"
        preprocessor_name(unit.preprocessor, f"{field}.preprocessor")
        if not 0.0 <= unit.weight <= 2.0:
            raise InvalidRequest(f"{field}.weight: {unit.weight} is not in 0..2", field=f"{field}.weight")
        if not 0.0 <= unit.start < unit.end <= 1.0:
            raise InvalidRequest(f"{field}.start: start {unit.start} and end {unit.end} must satisfy "
                                 "0 <= start < end <= 1", field=f"{field}.start")

"""A ControlNet unit's control map, made on the API side so a client can see it before it submits:
the native ``POST /v1/controlnets/preprocess`` (the page's preview) and the A1111 door's
``/controlnet/detect`` both call ``control_map_base64``. The preprocessors need no model weights (OpenCV
and numpy, no torch), so an API node without the engine runs them too; the job's own map is made
again by the engine, from the same function, so the preview is the map the job uses."""

from __future__ import annotations

import asyncio
import base64

from sdworker.errors import Unsupported
from sdworker.imaging.decode import decode_base64, decode_image_bytes
from sdworker.imaging.masks import png_bytes


async def control_map_base64(
    image: str, preprocessor: str, low: float, high: float, *, field: str, module_field: str, max_pixels: int
) -> str:
    """``image`` (base64) through ``preprocessor`` (a canonical name of ``domain.controlnet``), as base64
    PNG at the image's size. A bad image is a 4xx naming ``field``; OpenCV missing, a 501 naming
    ``module_field``."""

    def run() -> str:
        from sdworker.imaging.control_maps import control_map

        picture = decode_image_bytes(decode_base64(image, field=field), field=field, max_pixels=max_pixels)
        return base64.b64encode(png_bytes(control_map(picture, preprocessor, low, high))).decode("ascii")

    try:
        return await asyncio.to_thread(run)
    except ImportError as exc:  # an API node without the engine's packages (OpenCV)
        raise Unsupported(f"{module_field}: {preprocessor} needs OpenCV, which this node lacks",
                          field=module_field) from exc

"""Control maps from images, for ControlNet units whose preprocessor needs no model weights (names in
``sdworker.domain.controlnet``). Each returns an RGB image of the input's size, as sd-webui-controlnet's
modules of the same names do: ``canny`` is OpenCV's ``Canny(image, low, high)`` on the RGB image,
white edges on black; ``invert`` is 255 - the image; ``threshold`` is white where the grey level is
above ``low``."""

from __future__ import annotations

import numpy as np
from PIL import Image


def control_map(image: Image.Image, preprocessor: str, low: float = 100.0, high: float = 200.0) -> Image.Image:
    rgb = image.convert("RGB")
    if preprocessor == "none":
        return rgb
    pixels = np.asarray(rgb)
    if preprocessor == "canny":
        import cv2

        edges = cv2.Canny(pixels, int(low), int(high))
        return Image.fromarray(np.stack([edges] * 3, axis=-1))
    if preprocessor == "invert":
        return Image.fromarray(255 - pixels)
    if preprocessor == "threshold":
        grey = np.asarray(rgb.convert("L"))
        level = np.where(grey > low, 255, 0).astype(np.uint8)
        return Image.fromarray(np.stack([level] * 3, axis=-1))
    raise ValueError(f"unknown preprocessor {preprocessor!r}")  # domain.controlnet refused it earlier

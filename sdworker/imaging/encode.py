"""Encode pixels as PNG, JPEG or WebP. Pillow releases the GIL while encoding, so this runs well on
an encoder thread beside the denoising loop."""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

from PIL import Image
from PIL.PngImagePlugin import PngInfo

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

_PIL_FORMATS = {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG"}
MIME_TYPES = {"jpeg": "image/jpeg", "webp": "image/webp", "png": "image/png"}


def to_image(pixels: npt.NDArray[np.uint8] | Image.Image) -> Image.Image:
    if isinstance(pixels, Image.Image):
        return pixels
    return Image.fromarray(pixels, mode="RGB")


def encode_image(
    pixels: npt.NDArray[np.uint8] | Image.Image, fmt: str = "png", quality: int = 80, *, fast_png: bool = False
) -> bytes:
    """``fmt`` is jpeg | webp | png. ``quality`` applies to jpeg/webp; ``fast_png`` trades size for speed."""
    image = to_image(pixels)
    buffer = io.BytesIO()
    if fmt == "jpeg":
        image.convert("RGB").save(buffer, "JPEG", quality=quality)
    elif fmt == "webp":
        image.save(buffer, "WEBP", quality=quality, method=0)
    elif fmt == "png":
        image.save(buffer, "PNG", compress_level=1 if fast_png else 6)
    else:
        raise KeyError(fmt)
    return buffer.getvalue()


def encode_png(image: Image.Image, text: dict[str, str] | None = None) -> bytes:
    """A final image as PNG, with ``tEXt`` chunks (e.g. A1111's ``parameters``) when given."""
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", pnginfo=info)
    return buffer.getvalue()

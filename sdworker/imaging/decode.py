"""Decode client images safely: base64 -> bytes -> PIL image, with the pixel limit checked on the
header before any pixel is decoded (a 100-byte PNG can declare 50,000 x 50,000 pixels)."""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import warnings

from PIL import Image

from sdworker.errors import ImageTooLarge, InvalidImage

_DATA_URL = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,")
_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "GIF", "TIFF")
# What Pillow raises on hostile bytes besides OSError: ValueError (a text chunk above MAX_TEXT_CHUNK,
# a bad mode), SyntaxError (a broken PNG chunk), EOFError, struct.error, IndexError, KeyError,
# TypeError and ZeroDivisionError from format plugins reading fields they never validated. Only the
# client's bytes are read inside these ``try`` blocks, so each of these is a bad image, not our bug
# (tests/unit/test_decode_fuzz.py mutates thousands of files to find the next one).
PILLOW_FAILURES: tuple[type[Exception], ...] = (
    OSError, ValueError, SyntaxError, EOFError, struct.error, IndexError, KeyError, TypeError, ZeroDivisionError,
    Image.DecompressionBombError,  # while loading: a frame larger than the header said
)


def decode_base64(data: str, *, field: str) -> bytes:
    """Strict base64 (a ``data:image/...;base64,`` prefix is allowed; whitespace is ignored)."""
    if not isinstance(data, str) or not data:
        raise InvalidImage(f"{field}: expected a non-empty base64 string", field=field)
    payload = _DATA_URL.sub("", data.strip(), count=1)
    payload = "".join(payload.split())
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(f"{field}: not valid base64", field=field) from None


def decode_image_bytes(data: bytes, *, field: str, max_pixels: int, mode: str = "RGB") -> Image.Image:
    """Open image bytes, refuse a declared size above ``max_pixels`` before decoding, return ``mode``.

    Transparent images are flattened onto white for RGB so a cut-out does not turn black.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_FORMATS)
            width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        # Pillow refuses headers above its own bomb limit before telling the size; that limit (about
        # 89 M pixels) is far above any max_pixels a worker uses, so this is "too large" too.
        raise ImageTooLarge(
            f"{field}: the image header declares more than {Image.MAX_IMAGE_PIXELS} pixels; the limit is {max_pixels}",
            field=field,
        ) from None
    except PILLOW_FAILURES:  # UnidentifiedImageError is an OSError
        raise InvalidImage(f"{field}: the bytes are not a readable image (PNG, JPEG, WebP, ...)", field=field) from None
    if width < 1 or height < 1:
        raise InvalidImage(f"{field}: image has no pixels", field=field)
    if width * height > max_pixels:
        raise ImageTooLarge(
            f"{field}: image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}", field=field
        )
    try:
        image.load()
        return _to_mode(image, mode)
    except PILLOW_FAILURES:
        raise InvalidImage(f"{field}: the image data is truncated or corrupt", field=field) from None


def decode_base64_image(data: str, *, field: str, max_pixels: int, mode: str = "RGB") -> Image.Image:
    return decode_image_bytes(decode_base64(data, field=field), field=field, max_pixels=max_pixels, mode=mode)


def read_image_file(path: str, *, field: str, max_pixels: int, mode: str = "RGB") -> Image.Image:
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise InvalidImage(f"{field}: cannot read {path}: {exc.strerror}", field=field) from None
    return decode_image_bytes(data, field=field, max_pixels=max_pixels, mode=mode)


def _to_mode(image: Image.Image, mode: str) -> Image.Image:
    if mode == "RGB" and image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "L" and image.mode in ("RGBA", "LA"):
        # A mask drawn on a transparent layer: opaque strokes mean "repaint".
        alpha = image.getchannel("A")
        gray = image.convert("L")
        return Image.composite(gray, Image.new("L", image.size, 0), alpha)
    return image.convert(mode) if image.mode != mode else image


def check_mask_matches(image: Image.Image, mask: Image.Image, *, field: str = "mask_image") -> None:
    if image.size != mask.size:
        raise InvalidImage(
            f"{field}: mask is {mask.width}x{mask.height} but the image is {image.width}x{image.height}; "
            "they must be the same size",
            field=field,
        )

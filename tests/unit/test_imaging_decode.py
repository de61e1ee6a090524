"""Client images: the pixel limit is enforced on the declared header, before any pixel is decoded."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import pytest
from PIL import Image

from sdworker.errors import ImageTooLarge, InvalidImage
from sdworker.imaging.decode import check_mask_matches, decode_base64_image, decode_image_bytes


def png_declaring(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose IHDR is rewritten to declare width x height (CRC fixed, data untouched)."""
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    ihdr = data[12:29]
    ihdr[4:12] = struct.pack(">II", width, height)
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(ihdr)))
    return bytes(data)


@pytest.mark.parametrize("side", [2_000, 50_000])  # under and far over Pillow's own bomb limit
def test_a_header_above_the_limit_is_refused_as_too_large(side: int) -> None:
    with pytest.raises(ImageTooLarge) as info:
        decode_image_bytes(png_declaring(side, side), field="init_image", max_pixels=1024 * 1024)
    assert info.value.http_status == 413 and info.value.field == "init_image"


def test_a_small_image_decodes_to_rgb_and_a_transparent_one_is_flattened_on_white() -> None:
    buffer = io.BytesIO()
    Image.new("RGBA", (16, 8), (0, 0, 0, 0)).save(buffer, "PNG")
    image = decode_base64_image(
        "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(), field="f", max_pixels=1000
    )
    assert image.mode == "RGB" and image.size == (16, 8) and image.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("payload", ["not base64!!", base64.b64encode(b"plain text").decode(), ""])
def test_bad_base64_or_bytes_name_the_field(payload: str) -> None:
    with pytest.raises(InvalidImage) as info:
        decode_base64_image(payload, field="mask_image", max_pixels=1000)
    assert info.value.field == "mask_image" and "mask_image" in info.value.message


def test_a_truncated_image_is_invalid_not_a_crash() -> None:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, "PNG")
    with pytest.raises(InvalidImage):
        decode_image_bytes(buffer.getvalue()[:200], field="init_image", max_pixels=10_000)


def test_mask_size_must_match() -> None:
    with pytest.raises(InvalidImage) as info:
        check_mask_matches(Image.new("RGB", (64, 64)), Image.new("L", (64, 32)))
    assert "64x32" in info.value.message and "64x64" in info.value.message

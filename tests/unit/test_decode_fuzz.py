"""The image decoder against hostile bytes: thousands of mutated PNG, JPEG and WebP files, and the
crafted PNGs of the hostile-client run (an 8x8 image with an 8 MB zTXt or iCCP chunk). Every
outcome is a decoded image or ``InvalidImage``/``ImageTooLarge`` naming the field: anything else
escaping ``decode_image_bytes`` would be a 500 at the seven image entry points."""

from __future__ import annotations

import io
import random
import struct
import zlib

import pytest
from PIL import Image

from sdworker.errors import ImageTooLarge, InvalidImage
from sdworker.imaging.decode import decode_image_bytes

MUTATIONS_PER_FORMAT = 1800  # 5,400 files in all


def encoded(fmt: str, size: tuple[int, int] = (24, 16), mode: str = "RGB") -> bytes:
    image = Image.new(mode, size)
    for x in range(size[0]):
        for y in range(size[1]):
            image.putpixel((x, y), (x * 10 % 256, y * 15 % 256, (x * y) % 256)[: len(mode)] if mode != "L" else x * y)
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def with_chunk(png: bytes, chunk: bytes) -> bytes:
    return png[:33] + chunk + png[33:]  # right after the IHDR chunk


def crafted_pngs() -> dict[str, bytes]:
    """The hostile run's reproductions: text and ICC chunks that decompress to 8 MB, a broken chunk."""
    small = encoded("PNG", (8, 8))
    bomb = zlib.compress(b"a" * 8_000_000)
    return {
        "zTXt": with_chunk(small, png_chunk(b"zTXt", b"comment\0\0" + bomb)),
        "iCCP": with_chunk(small, png_chunk(b"iCCP", b"profile\0\0" + bomb)),
        "iTXt": with_chunk(small, png_chunk(b"iTXt", b"comment\0\1\0\0\0" + bomb)),
        "broken-chunk": small[:33] + b"\x00\x00\x00\x05IDAT" + small[41:],
    }


def mutate(data: bytes, rng: random.Random) -> bytes:
    buffer = bytearray(data)
    match rng.randrange(6):
        case 0:  # flip bits
            for _ in range(rng.randint(1, 8)):
                buffer[rng.randrange(len(buffer))] ^= 1 << rng.randrange(8)
        case 1:  # overwrite bytes with extremes (lengths, sizes, counts)
            for _ in range(rng.randint(1, 4)):
                buffer[rng.randrange(len(buffer))] = rng.choice((0x00, 0xFF, 0x7F, 0x80))
        case 2:  # truncate
            del buffer[rng.randrange(8, len(buffer)) :]
        case 3:  # duplicate a slice somewhere
            start = rng.randrange(len(buffer))
            piece = buffer[start : start + rng.randint(1, 64)]
            at = rng.randrange(len(buffer))
            buffer[at:at] = piece
        case 4:  # delete a slice
            start = rng.randrange(8, len(buffer))
            del buffer[start : start + rng.randint(1, 32)]
        case _:  # random bytes over the header
            for index in range(rng.randrange(8, min(64, len(buffer)))):
                if rng.random() < 0.2:
                    buffer[index] = rng.randrange(256)
    return bytes(buffer)


def outcome(data: bytes, mode: str = "RGB") -> str:
    try:
        decode_image_bytes(data, field="init_image", max_pixels=512 * 512, mode=mode)
    except (InvalidImage, ImageTooLarge) as exc:
        assert exc.field == "init_image" and exc.message.startswith("init_image: ")
        return type(exc).__name__
    return "decoded"


@pytest.mark.parametrize("name", sorted(crafted_pngs()))
def test_each_crafted_png_of_the_hostile_run_is_an_invalid_image(name: str) -> None:
    assert outcome(crafted_pngs()[name]) == "InvalidImage"


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_mutated_files_decode_or_are_refused_naming_the_field(fmt: str) -> None:
    rng = random.Random(f"sdworker-{fmt}")
    seeds = [encoded(fmt), encoded(fmt, (16, 16), "L"), encoded(fmt, (9, 13))]
    if fmt != "JPEG":
        seeds.append(encoded(fmt, (12, 12), "RGBA"))
    seen: dict[str, int] = {}
    for index in range(MUTATIONS_PER_FORMAT):
        data = mutate(seeds[index % len(seeds)], rng)
        result = outcome(data, mode="L" if index % 5 == 0 else "RGB")
        seen[result] = seen.get(result, 0) + 1
    # The mutations reach both sides: some still decode, most are refused.
    assert seen.get("InvalidImage", 0) > 0 and sum(seen.values()) == MUTATIONS_PER_FORMAT

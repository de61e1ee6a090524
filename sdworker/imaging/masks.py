"""Mask and init-image conversions the compat front doors need before a job is queued (Pillow only).

Our jobs take a mask with white = repaint, the same size as the init image. OpenAI's edit masks mark
what to repaint with fully transparent pixels; A1111 sends white = repaint but may ask for the mask
inverted or blurred, and for the init image fitted to the output size in one of three ways.
"""

from __future__ import annotations

import io

from PIL import Image, ImageFilter, ImageOps

from sdworker.imaging.decode import decode_image_bytes


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def mask_from_alpha(data: bytes, *, field: str, max_pixels: int) -> bytes:
    """OpenAI's mask -> ours: white where the mask is fully transparent, black elsewhere. A mask with
    no alpha channel is taken as already ours (white = repaint)."""
    image = decode_image_bytes(data, field=field, max_pixels=max_pixels, mode="RGBA" if _has_alpha(data) else "L")
    if image.mode == "L":
        return png_bytes(image)
    alpha = image.getchannel("A")
    return png_bytes(alpha.point(lambda value: 255 if value == 0 else 0))


def adjust_mask(data: bytes, *, field: str, max_pixels: int, invert: bool, blur: int) -> bytes:
    """A1111's ``inpainting_mask_invert`` and ``mask_blur`` (a Gaussian blur of that radius, in px)."""
    mask = decode_image_bytes(data, field=field, max_pixels=max_pixels, mode="L")
    if invert:
        mask = ImageOps.invert(mask)
    if blur > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(blur))
    return png_bytes(mask)


def fit_image(data: bytes, size: tuple[int, int], resize_mode: int, *, field: str, max_pixels: int) -> bytes:
    """A1111's ``resize_mode``: 0 just resize, 1 crop and resize (fill the size, cut the overflow),
    2 resize and fill (fit inside, pad with the stretched edges). Masks use the same call (mode L)."""
    image = decode_image_bytes(data, field=field, max_pixels=max_pixels, mode=_mode_of(data))
    if image.size == size or resize_mode == 0:
        return png_bytes(image.resize(size, Image.Resampling.LANCZOS) if image.size != size else image)
    if resize_mode == 1:
        return png_bytes(ImageOps.fit(image, size, Image.Resampling.LANCZOS))
    inner = ImageOps.contain(image, size, Image.Resampling.LANCZOS)
    canvas = inner.resize(size, Image.Resampling.LANCZOS)  # the stretched picture shows at the edges
    canvas.paste(inner, ((size[0] - inner.width) // 2, (size[1] - inner.height) // 2))
    return png_bytes(canvas)


def _has_alpha(data: bytes) -> bool:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info)
    except Exception:
        return False  # decode_image_bytes reports the bad bytes with the field name


def _mode_of(data: bytes) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return "L" if image.mode in ("L", "1") else "RGB"
    except Exception:
        return "RGB"

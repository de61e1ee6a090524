"""Sizing and quantising shared by the preview decoders: decoder output in [-1, 1] -> uint8 RGB.

The preview's size follows the image, not the decoder: the image is the latents times the VAE's
spatial factor (8 for every SD model), and the preview's longest side is min(max_size, image side),
aspect ratio kept. Shrinking happens on the decoder's device (so only the small result crosses to
the CPU); enlarging (latent2rgb's 8x) happens on the CPU after quantising, where Pillow does it on
uint8 in a fraction of a millisecond instead of upscaling floats on the device and copying them over.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from PIL import Image

# Every Stable Diffusion VAE (SD 1.x, 2.x, SDXL) and TAESD turn one latent into 8x8 pixels.
LATENT_TO_IMAGE = 8


def preview_size(
    latent_height: int, latent_width: int, max_size: int, factor: int = LATENT_TO_IMAGE
) -> tuple[int, int]:
    """(height, width) of the preview of an image of ``latent * factor`` pixels: longest side
    min(max_size, image side), the other side scaled by the same ratio and at least 1 px."""
    if max_size < 1:
        raise ValueError(f"max_size must be >= 1, got {max_size}")
    height, width = latent_height * factor, latent_width * factor
    longest = max(height, width)
    if longest <= max_size:
        return height, width
    scale = max_size / longest
    return max(1, round(height * scale)), max(1, round(width * scale))


def to_preview_pixels(images: torch.Tensor, size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """First image of ``images`` (B, 3, h, w), values about [-1, 1], any device/dtype -> (H, W, 3)
    uint8 RGB of ``size``, C-contiguous, on the CPU. NaN (an fp16 overflow) shows as mid grey."""
    image = images[0:1]
    height, width = size
    shrink = image.shape[-2] > height or image.shape[-1] > width
    if shrink:
        # "area" averages every source pixel (no aliasing) and works for any dtype and device.
        image = F.interpolate(image, size=size, mode="area")
    quantised = _quantise(image[0])
    if not shrink and tuple(quantised.shape[:2]) != size:
        resized = Image.fromarray(quantised, mode="RGB").resize((width, height), Image.Resampling.BILINEAR)
        quantised = np.asarray(resized)
    return np.ascontiguousarray(quantised)


def _quantise(image: torch.Tensor) -> npt.NDArray[np.uint8]:
    """(3, h, w) in [-1, 1] -> (h, w, 3) uint8 on the CPU; the conversion runs on the image's device."""
    scaled = (image.float().nan_to_num(0.0) + 1.0) * 127.5
    as_bytes = scaled.round_().clamp_(0, 255).to(torch.uint8).permute(1, 2, 0)
    return np.ascontiguousarray(as_bytes.cpu().numpy())

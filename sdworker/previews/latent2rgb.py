"""The cheapest preview: a fixed linear projection of the 4 latent channels to RGB.

``rgb = latents^T . F + bias`` per latent pixel, values about [-1, 1], then ``(x + 1) / 2 * 255``.
It applies to the latents as the denoising loop holds them (not divided by the VAE scaling factor)
and reads best on the predicted x0. One 4x3 matmul per latent pixel: about 50 k multiply-adds for a
512 px image, nothing next to a UNet step. The result is 1/8 of the image size; it is enlarged to
the preview size on the CPU (see ``pixels``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from sdworker.previews.pixels import LATENT_TO_IMAGE, preview_size, to_preview_pixels

# Published coefficients. Source: ComfyUI, comfy/latent_formats.py (classes SD15 and SDXL,
# attributes latent_rgb_factors / latent_rgb_factors_bias); rows are latent channels, columns R, G, B.
# SD 2.x shares SD 1.x's VAE, hence its latent space and these numbers; SD 1.x/2.x have no bias.
SD15_FACTORS = (
    (0.3512, 0.2297, 0.3227),
    (0.3250, 0.4974, 0.2350),
    (-0.2829, 0.1762, 0.2721),
    (-0.2120, -0.2616, -0.7177),
)
SD15_BIAS = (0.0, 0.0, 0.0)
SDXL_FACTORS = (
    (0.3651, 0.4232, 0.4341),
    (-0.2533, -0.0042, 0.1068),
    (0.1076, 0.1111, -0.0362),
    (-0.3165, -0.2492, -0.2188),
)
SDXL_BIAS = (0.1084, -0.0175, -0.0011)

COEFFICIENTS: dict[str, tuple[tuple[tuple[float, ...], ...], tuple[float, ...]]] = {
    "sd1": (SD15_FACTORS, SD15_BIAS),
    "sd2": (SD15_FACTORS, SD15_BIAS),
    "sdxl": (SDXL_FACTORS, SDXL_BIAS),
}


class Latent2RGBDecoder:
    """Linear latent -> RGB preview for one model family.

    The projection always runs in float32 on the latents' device: fp16 is fine for the values, but
    CPU half matmuls are slow or missing, and upcasting a (4, h, w) slice costs nothing. The
    coefficient tensors are built once per device and cached, never per call.
    """

    method = "latent2rgb"

    def __init__(self, family: str, image_factor: int = LATENT_TO_IMAGE) -> None:
        if family not in COEFFICIENTS:
            raise ValueError(f"no latent2rgb coefficients for model family {family!r}; known: {sorted(COEFFICIENTS)}")
        self.family = family
        self.image_factor = image_factor
        factors, bias = COEFFICIENTS[family]
        self._factors = torch.tensor(factors, dtype=torch.float32)  # (4, 3)
        self._bias = torch.tensor(bias, dtype=torch.float32)  # (3,)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def coefficients(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(factors (4, 3), bias (3,)) as float32 on ``device``, cached."""
        cached = self._on_device.get(device)
        if cached is None:
            cached = (self._factors.to(device), self._bias.to(device))
            self._on_device[device] = cached
        return cached

    @torch.inference_mode()
    def project(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, 4, h, w) -> (1, 3, h, w) float32 in about [-1, 1], on the latents' device (first image)."""
        if latents.ndim != 4 or latents.shape[1] != 4:
            raise ValueError(f"latent2rgb needs (B, 4, h, w) latents, got shape {tuple(latents.shape)}")
        factors, bias = self.coefficients(latents.device)
        first = latents[0].float()  # a new tensor or a view we only read: the input is never mutated
        rgb = torch.einsum("chw,cr->rhw", first, factors) + bias[:, None, None]
        return rgb.unsqueeze(0)

    def decode(self, latents: torch.Tensor, max_size: int) -> npt.NDArray[np.uint8]:
        size = preview_size(latents.shape[-2], latents.shape[-1], max_size, self.image_factor)
        with torch.inference_mode():
            return to_preview_pixels(self.project(latents), size)

"""The cheapest preview: a fixed linear projection of the latent channels to RGB.

``rgb = latents^T . F + bias`` per latent pixel, values about [-1, 1], then ``(x + 1) / 2 * 255``.
It applies to the latents as the denoising loop holds them (not divided by the VAE scaling factor)
and reads best on the predicted x0. One Cx3 matmul per latent pixel: about 50 k multiply-adds for a
512 px image, nothing next to a UNet step. The result is 1/8 of the image size; it is enlarged to
the preview size on the CPU (see ``pixels``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from sdworker.previews.pixels import LATENT_TO_IMAGE, preview_size, to_preview_pixels

# (factors: one row of (R, G, B) per latent channel, bias (R, G, B)). The published sets live with
# their families (sdworker.domain.families), which say which latent representation each expects.
Coefficients = tuple[tuple[tuple[float, ...], ...], tuple[float, ...]]


class Latent2RGBDecoder:
    """Linear latent -> RGB preview for one latent space (C channels -> 3 colours).

    The projection always runs in float32 on the latents' device: fp16 is fine for the values, but
    CPU half matmuls are slow or missing, and upcasting a (4, h, w) slice costs nothing. The
    coefficient tensors are built once per device and cached, never per call.
    """

    method = "latent2rgb"

    def __init__(self, coefficients: Coefficients, image_factor: int = LATENT_TO_IMAGE) -> None:
        factors, bias = self.table = coefficients
        if not factors or any(len(row) != 3 for row in factors) or len(bias) != 3:
            raise ValueError("latent2rgb coefficients need one (R, G, B) row per latent channel and an RGB bias")
        self.channels = len(factors)
        self.image_factor = image_factor
        self._factors = torch.tensor(factors, dtype=torch.float32)  # (C, 3)
        self._bias = torch.tensor(bias, dtype=torch.float32)  # (3,)
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def coefficients(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(factors (C, 3), bias (3,)) as float32 on ``device``, cached."""
        cached = self._on_device.get(device)
        if cached is None:
            cached = (self._factors.to(device), self._bias.to(device))
            self._on_device[device] = cached
        return cached

    @torch.inference_mode()
    def project(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (1, 3, h, w) float32 in about [-1, 1], on the latents' device (first image)."""
        if latents.ndim != 4 or latents.shape[1] != self.channels:
            raise ValueError(f"latent2rgb needs (B, {self.channels}, h, w) latents, got shape {tuple(latents.shape)}")
        factors, bias = self.coefficients(latents.device)
        first = latents[0].float()  # a new tensor or a view we only read: the input is never mutated
        rgb = torch.einsum("chw,cr->rhw", first, factors) + bias[:, None, None]
        return rgb.unsqueeze(0)

    def decode(self, latents: torch.Tensor, max_size: int) -> npt.NDArray[np.uint8]:
        size = preview_size(latents.shape[-2], latents.shape[-1], max_size, self.image_factor)
        with torch.inference_mode():
            return to_preview_pixels(self.project(latents), size)

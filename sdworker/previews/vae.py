"""Previews with the model's own VAE: the reference design's method, kept faithful on purpose.

It decodes the full-size latents (about 1.6-1.7 UNet steps at 512 px for SD 1.5) and then shrinks
the picture to the preview size, so its cost is what the reference design pays; it exists for users
who want the exact final colours and to measure that cost, not to be cheap. Use ``taesd`` or
``latent2rgb`` for cheap previews.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from diffusers.models import AutoencoderKL

from sdworker.previews.pixels import preview_size, to_preview_pixels


def vae_image_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent side: the VAE halves the size between blocks (8 for every SD model; a Wan-style
    VAE names its blocks ``dim_mult``)."""
    blocks = vae.config.get("block_out_channels") or vae.config.get("dim_mult") or (0, 0, 0, 0)
    return int(2 ** (len(blocks) - 1))


class VaeDecoder:
    """Decode with an ``AutoencoderKL`` in its own device and dtype.

    Latents from the loop are scaled by ``scaling_factor`` (and shifted by ``shift_factor`` where a
    config has one), as in diffusers' pipelines: ``latents / scaling_factor + shift_factor``.

    SDXL's own VAE overflows in fp16 (its config says ``force_upcast``); diffusers' SDXL pipeline
    casts the whole VAE to fp32 for the final decode and back. Casting the shared VAE back and forth
    on every preview would cost more than the decode, so such a VAE gets a float32 copy of just its
    decoding half (``post_quant_conv`` + ``decoder``), made on the first preview and kept (about 200
    MB for SDXL on the GPU, only for users who pick this method). VAEs that are fine in fp16 (e.g.
    madebyollin's sdxl-vae-fp16-fix, ``force_upcast`` false) decode as they are.
    """

    method = "vae"

    def __init__(self, vae: AutoencoderKL) -> None:
        self.vae = vae
        self.image_factor = vae_image_factor(vae)
        self.scaling_factor = float(vae.config["scaling_factor"])
        shift = vae.config.get("shift_factor")
        self.shift_factor = float(shift) if shift is not None else 0.0
        self._float32_half: torch.nn.Module | None = None

    @property
    def needs_upcast(self) -> bool:
        parameter = next(self.vae.parameters())
        return parameter.dtype == torch.float16 and bool(self.vae.config.get("force_upcast", False))

    def _decode_upcast(self, latents: torch.Tensor) -> torch.Tensor:
        if self._float32_half is None:
            parts = [self.vae.post_quant_conv, self.vae.decoder]
            self._float32_half = torch.nn.Sequential(*(copy.deepcopy(p) for p in parts if p is not None)).to(
                torch.float32
            )
        return self._float32_half(latents.float())

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, max_size: int) -> npt.NDArray[np.uint8]:
        size = preview_size(latents.shape[-2], latents.shape[-1], max_size, self.image_factor)
        parameter = next(self.vae.parameters())
        first = latents[0:1].to(device=parameter.device, dtype=parameter.dtype)
        scaled = first / self.scaling_factor + self.shift_factor  # a new tensor: the input stays as it was
        images = self._decode_upcast(scaled) if self.needs_upcast else self.vae.decode(scaled).sample
        return to_preview_pixels(images, size)


class DenormalisingVaeDecoder:
    """The ``vae`` preview of a family whose loop holds normalised latents that its VAE cannot take as
    they are (FLUX.2: batch-norm statistics over patches; Qwen-Image: Wan's per-channel mean and std,
    and a video VAE). ``denormalise(vae, latents)`` gives what the pipeline hands its VAE after the loop;
    a video VAE's one frame is the picture."""

    method = "vae"

    def __init__(self, vae: Any, denormalise: Callable[[Any, torch.Tensor], torch.Tensor]) -> None:
        self.vae = vae
        self.denormalise = denormalise
        self.image_factor = vae_image_factor(vae)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, max_size: int) -> npt.NDArray[np.uint8]:
        size = preview_size(latents.shape[-2], latents.shape[-1], max_size, self.image_factor)
        parameter = next(self.vae.parameters())
        images = self.vae.decode(self.denormalise(self.vae, latents[0:1].to(parameter.device))).sample
        return to_preview_pixels(images[:, :, 0] if images.ndim == 5 else images, size)

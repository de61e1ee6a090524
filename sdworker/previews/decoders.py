"""Preview decoders: the predicted (or current) latents -> a small RGB picture, on the GPU thread.

The engine builds the decoders it can offer once, at load (``create_decoder``), and calls
``decode`` on the thread that runs the denoising loop, because decoding touches the model. Decoders
only decode: encoding to JPEG/WebP/PNG happens on another thread (``sdworker.imaging.encode``).

Methods, cheapest first (costs from /work/shared/reference/facts.md, SD 1.5 on a CPU):

- ``latent2rgb``: a 4x3 linear projection, under a millisecond; colours approximate, 8x blocky.
- ``taesd``: the tiny autoencoder, about 0.1 UNet step (less: it decodes latents shrunk to the preview).
- ``vae``: the model's own VAE, about 1.7 UNet steps at 512 px: the reference design's cost.

``auto`` resolves here to ``taesd`` when a TAESD is loaded, else ``latent2rgb``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from sdworker.previews.latent2rgb import Coefficients, Latent2RGBDecoder
from sdworker.previews.options import DECODER_METHODS
from sdworker.previews.pixels import LATENT_TO_IMAGE
from sdworker.previews.taesd import TaesdDecoder
from sdworker.previews.vae import VaeDecoder, vae_image_factor

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt
    import torch
    from diffusers.models import AutoencoderKL, AutoencoderTiny


class PreviewDecoder(Protocol):
    """Turns latents into a preview of the first image.

    ``decode(latents, max_size)``: ``latents`` is (B, 4, h, w) as the denoising loop holds them (NOT
    divided by the VAE scaling factor), on any device and dtype; only ``latents[0:1]`` is decoded.
    Returns (H, W, 3) uint8 RGB, C-contiguous, on the CPU, longest side = min(max_size, image side)
    with the aspect ratio kept. Runs under ``torch.inference_mode()`` and never mutates its input.
    """

    method: str

    def decode(self, latents: torch.Tensor, max_size: int) -> npt.NDArray[np.uint8]: ...


def resolve_method(method: str, *, taesd_available: bool) -> str:
    """``auto`` -> ``taesd`` when a TAESD is loaded, else ``latent2rgb``; other names unchanged."""
    if method == "auto":
        return "taesd" if taesd_available else "latent2rgb"
    return method


def create_decoder(
    method: str,
    *,
    latent2rgb: Coefficients | None,
    vae: AutoencoderKL | None,
    taesd: AutoencoderTiny | None,
) -> PreviewDecoder:
    """Build the decoder for ``method`` (latent2rgb | taesd | vae, or auto) of a model whose latent space
    has the ``latent2rgb`` coefficients (its family's, ``sdworker.domain.families``). Build once per
    model and reuse: decoders cache what they need per device.

    Raises ``KeyError`` for a method that is not a decoder (``none`` included: it decodes nothing)
    and ``ValueError`` when the method needs a model or coefficients that were not given.
    The engine checks availability at load, so these are programming errors, not client errors.
    """
    resolved = resolve_method(method, taesd_available=taesd is not None)
    if resolved not in DECODER_METHODS:
        raise KeyError(f"unknown preview decoder {method!r}; known: {', '.join(DECODER_METHODS)}")
    # The preview's size follows the image, and the image is the latents times the VAE's factor.
    image_factor = vae_image_factor(vae) if vae is not None else LATENT_TO_IMAGE
    if resolved == "latent2rgb":
        if latent2rgb is None:
            raise ValueError("the latent2rgb preview needs coefficients for the model's latent space")
        return Latent2RGBDecoder(latent2rgb, image_factor)
    if resolved == "taesd":
        if taesd is None:
            raise ValueError("the taesd preview needs a TAESD model (--taesd PATH)")
        return TaesdDecoder(taesd, image_factor)
    if vae is None:
        raise ValueError("the vae preview needs the model's VAE")
    return VaeDecoder(vae)

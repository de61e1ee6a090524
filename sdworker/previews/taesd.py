"""TAESD previews: madebyollin's tiny autoencoder through diffusers' ``AutoencoderTiny``.

TAESD's decoder takes the latents exactly as the denoising loop holds them (its ``scaling_factor``
is 1.0: no division by the VAE's factor) and diffusers returns images in [-1, 1]. Its cost grows
with the latent area, and a preview is small, so when the image is bigger than the preview the
latents are first shrunk (area average) to the preview's size / 8: a 512 px image previewed at
256 px decodes 32x32 latents instead of 64x64, a quarter of the work. Latents are smooth at this
scale, so the picture survives (tests/previews measure it against decode-then-resize).

Users download the weights themselves (``madebyollin/taesd`` for SD 1.x/2.x, ``madebyollin/taesdxl``
for SDXL, ``madebyollin/taef1`` for FLUX.1 and Z-Image, ``madebyollin/taesd3`` for SD 3.5: all
``AutoencoderTiny``, the last two with 16 latent channels, fed the unpacked latents as the loop holds
them) and pass the folder with ``--taesd [FAMILY=]PATH``; ``demo-model`` writes a tiny random one made by
``build_random_taesd`` so the real loading code runs in tests.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from diffusers.models import AutoencoderTiny

from sdworker.errors import ModelError, UnsafeCheckpoint
from sdworker.previews.pixels import LATENT_TO_IMAGE, preview_size, to_preview_pixels

_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")


def load_taesd(path: str, device: torch.device, dtype: torch.dtype, *, latent_channels: int = 4) -> AutoencoderTiny:
    """Load a TAESD folder (``config.json`` + safetensors weights) onto ``device`` in ``dtype``.

    Raises ``ModelError`` with one line saying what is wrong; ``UnsafeCheckpoint`` when the folder
    only has pickled (``.bin``) weights, which we never unpickle.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise ModelError(f"TAESD folder not found: {path} (download madebyollin/taesd and pass its folder)")
    if not (folder / "config.json").is_file():
        raise ModelError(f"TAESD folder {path} has no config.json (expected a diffusers AutoencoderTiny folder)")
    if not any((folder / name).is_file() for name in _WEIGHT_FILES):
        if any(folder.glob("*.bin")):
            raise UnsafeCheckpoint(f"TAESD folder {path} only has pickled .bin weights; use its .safetensors file")
        raise ModelError(f"TAESD folder {path} has no diffusion_pytorch_model.safetensors")
    variant = None if (folder / _WEIGHT_FILES[0]).is_file() else "fp16"
    try:
        model = AutoencoderTiny.from_pretrained(str(folder), torch_dtype=dtype, use_safetensors=True, variant=variant)
    except Exception as exc:  # diffusers raises many types (OSError, ValueError, safetensors errors)
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"cannot load TAESD from {path}: {reason}") from exc
    if not isinstance(model, AutoencoderTiny):
        raise ModelError(f"{path} is not an AutoencoderTiny (TAESD) folder")
    channels = model.config["latent_channels"]
    if channels != latent_channels:
        raise ModelError(f"TAESD in {path} has {channels} latent channels; the model's latents have {latent_channels}")
    # channels_last: NHWC convolutions, which oneDNN and cuDNN run faster (a 256 px preview on the CPU:
    # 1.3x); the pixels are the same to float rounding.
    return model.to(device, memory_format=torch.channels_last).eval().requires_grad_(False)


def build_random_taesd(seed: int = 0) -> AutoencoderTiny:
    """A tiny random-weight TAESD for the demo model, the same for the same seed.

    Same shape of network as the real one (4 blocks: 8x upscaling, 4 latent channels) with 8 channels
    and one block per level instead of 64 channels and 3: about 10 k parameters. Save it with
    ``save_pretrained`` and it loads with ``AutoencoderTiny.from_pretrained`` / ``load_taesd``.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoencoderTiny(
            encoder_block_out_channels=(8, 8, 8, 8),
            decoder_block_out_channels=(8, 8, 8, 8),
            num_encoder_blocks=(1, 1, 1, 1),
            num_decoder_blocks=(1, 1, 1, 1),
            latent_channels=4,
        )
    # Freshly initialised, the decoder's output sits near 0 in [0, 1] (a black preview); centre it
    # on mid grey with visible contrast so a demo preview shows something. Still deterministic.
    last = model.decoder.layers[-1]
    with torch.no_grad():
        last.weight.mul_(3.0)
        last.bias.fill_(0.5)
    return model.eval()


def shrink_latents(latents: torch.Tensor, size: tuple[int, int], factor: int) -> torch.Tensor:
    """Area-average ``latents`` down to the smallest latent size whose decode covers ``size`` px."""
    target = (math.ceil(size[0] / factor), math.ceil(size[1] / factor))
    if target[0] >= latents.shape[-2] and target[1] >= latents.shape[-1]:
        return latents
    return F.interpolate(latents, size=target, mode="area")


class TaesdDecoder:
    """Preview with TAESD, in TAESD's device and dtype. ``shrink`` = False decodes full-size latents
    (kept for the test that measures what shrinking costs in picture quality)."""

    method = "taesd"

    def __init__(self, taesd: AutoencoderTiny, image_factor: int = LATENT_TO_IMAGE, *, shrink: bool = True) -> None:
        self.taesd = taesd
        self.image_factor = image_factor
        self.shrink = shrink
        # TAESD upsamples 2x between blocks: 8 for the real one and for build_random_taesd.
        self.decoder_factor = 2 ** (len(taesd.config["decoder_block_out_channels"]) - 1)

    @torch.inference_mode()
    def decode(self, latents: torch.Tensor, max_size: int) -> npt.NDArray[np.uint8]:
        size = preview_size(latents.shape[-2], latents.shape[-1], max_size, self.image_factor)
        parameter = next(self.taesd.parameters())
        first = latents[0:1].to(device=parameter.device, dtype=parameter.dtype)
        if self.shrink:
            first = shrink_latents(first, size, self.decoder_factor)
        images = self.taesd.decode(first.contiguous(memory_format=torch.channels_last)).sample
        return to_preview_pixels(images, size)

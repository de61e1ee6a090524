"""Every decoder on the demo model's own VAE and TAESD: sizes, pixels, encoding, errors."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from diffusers.models import AutoencoderKL, AutoencoderTiny
from PIL import Image
from torch.overrides import TorchFunctionMode

from sdworker.domain.families import family_facts
from sdworker.imaging.encode import encode_image
from sdworker.previews.decoders import PreviewDecoder, create_decoder
from sdworker.previews.vae import VaeDecoder

SD1 = family_facts("sd1").latent.coefficients
SDXL = family_facts("sdxl").latent.coefficients

METHODS = ("latent2rgb", "taesd", "vae")
MAGIC = {"jpeg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n", "webp": b"RIFF"}


def _decoder(method: str, vae: AutoencoderKL, taesd: AutoencoderTiny) -> PreviewDecoder:
    return create_decoder(method, latent2rgb=SD1, vae=vae, taesd=taesd)


@pytest.mark.parametrize(
    ("latent_hw", "max_size", "expected_hw"),
    [
        ((8, 8), 256, (64, 64)),  # image smaller than max_size: preview at image size
        ((32, 32), 128, (128, 128)),
        ((16, 24), 96, (64, 96)),  # landscape 128x192 -> longest side 96, aspect kept
        ((24, 16), 100, (100, 67)),  # portrait 192x128, 2:3 rounded
    ],
)
@pytest.mark.parametrize("method", METHODS)
def test_shape_dtype_and_layout(
    method: str,
    latent_hw: tuple[int, int],
    max_size: int,
    expected_hw: tuple[int, int],
    demo_vae: AutoencoderKL,
    demo_taesd: AutoencoderTiny,
    make_latents: Callable[..., torch.Tensor],
) -> None:
    latents = make_latents(*latent_hw, batch=2)
    before = latents.clone()
    decoder = _decoder(method, demo_vae, demo_taesd)
    pixels = decoder.decode(latents, max_size)
    assert decoder.method == method
    assert pixels.shape == (*expected_hw, 3)
    assert pixels.dtype == np.uint8
    assert pixels.flags["C_CONTIGUOUS"]
    assert max(pixels.shape[:2]) <= max_size
    assert pixels.std() > 1.0  # a picture, not one flat colour
    assert torch.equal(latents, before)


@pytest.mark.parametrize("method", METHODS)
def test_values_fill_the_byte_range_sensibly(
    method: str, demo_vae: AutoencoderKL, demo_taesd: AutoencoderTiny, make_latents: Callable[..., torch.Tensor]
) -> None:
    pixels = _decoder(method, demo_vae, demo_taesd).decode(make_latents(16, 16, seed=3), 128).astype(float)
    # Decoders map [-1, 1] to [0, 255]: neither all black nor all white, clamped at the ends.
    assert 10.0 < pixels.mean() < 245.0
    assert pixels.min() >= 0 and pixels.max() <= 255


@pytest.mark.parametrize("fmt", ["jpeg", "webp", "png"])
@pytest.mark.parametrize("method", METHODS)
def test_encoded_preview_has_format_and_size(
    method: str,
    fmt: str,
    demo_vae: AutoencoderKL,
    demo_taesd: AutoencoderTiny,
    make_latents: Callable[..., torch.Tensor],
) -> None:
    pixels = _decoder(method, demo_vae, demo_taesd).decode(make_latents(16, 24), 64)
    data = encode_image(pixels, fmt, quality=80)
    assert data.startswith(MAGIC[fmt])
    if fmt == "webp":
        assert data[8:12] == b"WEBP"
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG"}[fmt]
        assert image.size == (64, 43)  # PIL: (width, height) of a 128x192 image at max 64
        assert image.mode == "RGB"


def test_vae_preview_is_the_vae_decode_scaled_back(
    demo_vae: AutoencoderKL, make_latents: Callable[..., torch.Tensor]
) -> None:
    latents = make_latents(8, 8, seed=4)
    with torch.no_grad():
        reference = demo_vae.decode(latents / demo_vae.config["scaling_factor"]).sample[0]
    expected = ((reference.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    pixels = create_decoder("vae", latent2rgb=SD1, vae=demo_vae, taesd=None).decode(latents, 64)
    assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= 1
    # ...and not the undivided latents, which would be a different picture.
    with torch.no_grad():
        wrong = demo_vae.decode(latents).sample[0]
    wrong_bytes = ((wrong.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    assert np.abs(pixels.astype(int) - wrong_bytes.astype(int)).mean() > 2


def test_taesd_preview_takes_the_loop_latents_directly(
    demo_taesd: AutoencoderTiny, make_latents: Callable[..., torch.Tensor]
) -> None:
    latents = make_latents(8, 8, seed=5)
    with torch.no_grad():
        reference = demo_taesd.decode(latents).sample[0]
    expected = ((reference.permute(1, 2, 0) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
    pixels = create_decoder("taesd", latent2rgb=SD1, vae=None, taesd=demo_taesd).decode(latents, 64)
    assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= 1


def test_auto_is_taesd_when_loaded_else_latent2rgb(demo_vae: AutoencoderKL, demo_taesd: AutoencoderTiny) -> None:
    assert create_decoder("auto", latent2rgb=SD1, vae=demo_vae, taesd=demo_taesd).method == "taesd"
    assert create_decoder("auto", latent2rgb=SD1, vae=demo_vae, taesd=None).method == "latent2rgb"


def test_unknown_method_or_missing_model_raises(demo_vae: AutoencoderKL) -> None:
    with pytest.raises(KeyError, match="bogus"):
        create_decoder("bogus", latent2rgb=SD1, vae=demo_vae, taesd=None)
    with pytest.raises(KeyError):
        create_decoder("none", latent2rgb=SD1, vae=demo_vae, taesd=None)  # "none" decodes nothing
    with pytest.raises(ValueError, match="TAESD"):
        create_decoder("taesd", latent2rgb=SD1, vae=demo_vae, taesd=None)
    with pytest.raises(ValueError, match="VAE"):
        create_decoder("vae", latent2rgb=SD1, vae=None, taesd=None)
    with pytest.raises(ValueError, match="coefficients"):
        create_decoder("latent2rgb", latent2rgb=None, vae=None, taesd=None)
    with pytest.raises(ValueError, match="coefficients"):
        create_decoder("latent2rgb", latent2rgb=(((1.0, 0.0),), (0.0, 0.0, 0.0)), vae=None, taesd=None)


class _ComputeProbe(TorchFunctionMode):
    """Records, for every einsum/convolution, whether it ran under ``torch.inference_mode`` and the
    dtype of its input."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[bool] = []
        self.conv_dtypes: set[torch.dtype] = set()

    def __torch_function__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        name = getattr(func, "__name__", "")
        if name in {"einsum", "conv2d"}:
            self.seen.append(torch.is_inference_mode_enabled())
        if name == "conv2d":
            self.conv_dtypes.add(args[0].dtype)
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("method", METHODS)
def test_decoding_runs_in_inference_mode(
    method: str, demo_vae: AutoencoderKL, demo_taesd: AutoencoderTiny, make_latents: Callable[..., torch.Tensor]
) -> None:
    decoder = _decoder(method, demo_vae, demo_taesd)
    latents = make_latents(8, 8).requires_grad_(True)
    with _ComputeProbe() as probe:
        pixels = decoder.decode(latents, 64)
    assert pixels.shape == (64, 64, 3)
    assert probe.seen and all(probe.seen)  # the projection / every convolution: no autograd bookkeeping


def test_fp16_vae_that_asks_for_upcasting_decodes_in_float32(
    demo_vae: AutoencoderKL, make_latents: Callable[..., torch.Tensor]
) -> None:
    # SDXL's VAE overflows in fp16 and says so with force_upcast; the preview must not show NaN grey.
    latents = make_latents(8, 8, seed=8)
    expected = create_decoder("vae", latent2rgb=SDXL, vae=demo_vae, taesd=None).decode(latents, 64)
    half = copy.deepcopy(demo_vae)
    half.register_to_config(force_upcast=True)
    half = half.half()
    decoder = create_decoder("vae", latent2rgb=SDXL, vae=half, taesd=None)
    assert isinstance(decoder, VaeDecoder) and decoder.needs_upcast
    with _ComputeProbe() as probe:
        pixels = decoder.decode(latents.half(), 64)
    assert probe.conv_dtypes == {torch.float32}
    assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= 1
    assert next(half.parameters()).dtype == torch.float16  # the shared VAE itself stays as it was

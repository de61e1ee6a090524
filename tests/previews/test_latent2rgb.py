"""latent2rgb: the published projection, checked against pixels computed by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdworker.domain.families import family_facts
from sdworker.previews.decoders import create_decoder
from sdworker.previews.latent2rgb import Latent2RGBDecoder

SD1 = family_facts("sd1").latent.coefficients
SD2 = family_facts("sd2").latent.coefficients
SDXL = family_facts("sdxl").latent.coefficients

# One latent vector (channels 0..3) placed at pixel (row 3, column 5) of 8x8 latents.
VECTOR = (0.5, -0.25, 1.0, -0.75)


def _latents_with_vector(dtype: torch.dtype = torch.float32) -> torch.Tensor:
    latents = torch.zeros(1, 4, 8, 8, dtype=dtype)
    latents[0, :, 3, 5] = torch.tensor(VECTOR, dtype=dtype)
    return latents


def _to_byte(x: float) -> int:
    return int(min(255, max(0, round((x + 1) / 2 * 255))))


def test_sd15_pixel_matches_hand_computation() -> None:
    # ComfyUI's SD15 factors, written out: R = sum(v_c * F[c][0]) etc., no bias.
    red = 0.5 * 0.3512 + -0.25 * 0.3250 + 1.0 * -0.2829 + -0.75 * -0.2120  # = -0.02905
    green = 0.5 * 0.2297 + -0.25 * 0.4974 + 1.0 * 0.1762 + -0.75 * -0.2616  # = 0.3627
    blue = 0.5 * 0.3227 + -0.25 * 0.2350 + 1.0 * 0.2721 + -0.75 * -0.7177  # = 0.912975
    expected = [_to_byte(red), _to_byte(green), _to_byte(blue)]
    assert expected == [124, 174, 244]

    decoder = create_decoder("latent2rgb", latent2rgb=SD1, vae=None, taesd=None)
    # max_size 8 on a 64 px image: the preview is exactly the latent grid, one pixel per latent.
    pixels = decoder.decode(_latents_with_vector(), max_size=8)
    assert pixels.shape == (8, 8, 3)
    assert pixels[3, 5].tolist() == expected
    assert pixels[0, 0].tolist() == [128, 128, 128]  # a zero latent is mid grey: SD 1.x has no bias


def test_sd2_uses_the_sd1_latent_space() -> None:
    sd1 = create_decoder("latent2rgb", latent2rgb=SD1, vae=None, taesd=None).decode(_latents_with_vector(), 8)
    sd2 = create_decoder("latent2rgb", latent2rgb=SD2, vae=None, taesd=None).decode(_latents_with_vector(), 8)
    np.testing.assert_array_equal(sd1, sd2)


def test_sdxl_pixel_includes_the_bias() -> None:
    red = 0.5 * 0.3651 + -0.25 * -0.2533 + 1.0 * 0.1076 + -0.75 * -0.3165 + 0.1084  # = 0.69925
    green = 0.5 * 0.4232 + -0.25 * -0.0042 + 1.0 * 0.1111 + -0.75 * -0.2492 - 0.0175  # = 0.49315
    blue = 0.5 * 0.4341 + -0.25 * 0.1068 + 1.0 * -0.0362 + -0.75 * -0.2188 - 0.0011  # = 0.31715
    expected = [_to_byte(red), _to_byte(green), _to_byte(blue)]
    assert expected == [217, 190, 168]

    pixels = create_decoder("latent2rgb", latent2rgb=SDXL, vae=None, taesd=None).decode(_latents_with_vector(), 8)
    assert pixels[3, 5].tolist() == expected
    # A zero latent shows the bias alone: (0.1084, -0.0175, -0.0011) -> bytes.
    assert pixels[0, 0].tolist() == [_to_byte(0.1084), _to_byte(-0.0175), _to_byte(-0.0011)] == [141, 125, 127]


def test_upscaled_preview_keeps_a_uniform_colour_exactly() -> None:
    latents = torch.tensor(VECTOR).view(1, 4, 1, 1).expand(1, 4, 8, 12).contiguous()
    pixels = create_decoder("latent2rgb", latent2rgb=SD1, vae=None, taesd=None).decode(latents, max_size=256)
    assert pixels.shape == (64, 96, 3)  # a 64x96 image is smaller than 256: preview at image size
    assert (pixels == np.array([124, 174, 244], dtype=np.uint8)).all()


def test_values_are_clamped_not_wrapped() -> None:
    latents = torch.zeros(1, 4, 8, 8)
    latents[0, 3] = 100.0  # channel 3 is strongly negative in every colour
    latents[0, 3, 0, 0] = -100.0
    pixels = create_decoder("latent2rgb", latent2rgb=SD1, vae=None, taesd=None).decode(latents, 8)
    assert pixels[1, 1].tolist() == [0, 0, 0]
    assert pixels[0, 0].tolist() == [255, 255, 255]


def test_decodes_only_the_first_image_and_leaves_the_input_alone() -> None:
    latents = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    before = latents.clone()
    decoder = create_decoder("latent2rgb", latent2rgb=SD1, vae=None, taesd=None)
    batch = decoder.decode(latents, 64)
    alone = decoder.decode(latents[0:1], 64)
    np.testing.assert_array_equal(batch, alone)
    assert torch.equal(latents, before)


def test_half_precision_matches_float32_within_one_level() -> None:
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    decoder = create_decoder("latent2rgb", latent2rgb=SDXL, vae=None, taesd=None)
    full = decoder.decode(latents, 128).astype(int)
    half = decoder.decode(latents.half(), 128).astype(int)
    assert np.abs(full - half).max() <= 1


def test_coefficients_are_built_once_per_device() -> None:
    decoder = Latent2RGBDecoder(SD1)
    first = decoder.coefficients(torch.device("cpu"))
    decoder.decode(torch.zeros(1, 4, 8, 8), 64)
    assert decoder.coefficients(torch.device("cpu"))[0] is first[0]


def test_rejects_latents_with_other_channels_than_its_coefficients() -> None:
    with pytest.raises(ValueError, match="4"):
        Latent2RGBDecoder(SD1).decode(torch.zeros(1, 16, 8, 8), 64)


def test_flux1_projects_sixteen_channels_with_its_bias() -> None:
    facts = family_facts("flux1").latent
    latents = torch.zeros(1, 16, 4, 4)
    latents[0, 0, 1, 2] = 1.0  # channel 0 alone: its row plus the bias
    pixels = Latent2RGBDecoder(facts.coefficients).decode(latents, 4)
    row, bias = facts.factors[0], facts.bias
    assert pixels[1, 2].tolist() == [_to_byte(row[i] + bias[i]) for i in range(3)]
    assert pixels[0, 0].tolist() == [_to_byte(b) for b in bias]

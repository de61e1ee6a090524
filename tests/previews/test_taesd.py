"""TAESD: loading (and refusing) folders, the random demo TAESD, and what shrinking latents costs."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers.models import AutoencoderTiny

from sdworker.errors import ModelError, UnsafeCheckpoint
from sdworker.previews.taesd import TaesdDecoder, build_random_taesd, load_taesd


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(((a.astype(float) - b.astype(float)) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def test_random_taesd_is_seeded_and_leaves_the_global_rng_alone() -> None:
    torch.manual_seed(99)
    expected_next = torch.rand(1)
    torch.manual_seed(99)
    first, again, other = build_random_taesd(0), build_random_taesd(0), build_random_taesd(1)
    assert torch.equal(torch.rand(1), expected_next)  # building did not consume the caller's RNG
    a, b, c = first.state_dict(), again.state_dict(), other.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert sum(p.numel() for p in first.parameters()) < 50_000  # tiny: tests and the demo stay fast


def test_random_taesd_round_trips_through_from_pretrained(tmp_path: Path) -> None:
    model = build_random_taesd(7)
    model.save_pretrained(tmp_path, safe_serialization=True)
    loaded = AutoencoderTiny.from_pretrained(str(tmp_path))
    assert isinstance(loaded, AutoencoderTiny)
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model.decode(latents).sample, loaded.decode(latents).sample)
        # 8x upscaling like the real TAESD, so preview sizes behave as with real weights.
        assert model.decode(latents).sample.shape == (1, 3, 64, 64)


def test_load_taesd_gives_the_requested_dtype(tmp_path: Path) -> None:
    build_random_taesd(0).save_pretrained(tmp_path, safe_serialization=True)
    model = load_taesd(str(tmp_path), torch.device("cpu"), torch.bfloat16)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert not any(p.requires_grad for p in model.parameters())


def test_load_taesd_missing_folder_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found") as caught:
        load_taesd(str(tmp_path / "nowhere"), torch.device("cpu"), torch.float32)
    assert "\n" not in caught.value.message


def test_load_taesd_folder_without_config(tmp_path: Path) -> None:
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"x")
    with pytest.raises(ModelError, match=r"config\.json"):
        load_taesd(str(tmp_path), torch.device("cpu"), torch.float32)


def test_load_taesd_refuses_pickled_weights(tmp_path: Path) -> None:
    build_random_taesd(0).save_pretrained(tmp_path, safe_serialization=False)
    assert (tmp_path / "diffusion_pytorch_model.bin").exists()
    with pytest.raises(UnsafeCheckpoint, match="safetensors"):
        load_taesd(str(tmp_path), torch.device("cpu"), torch.float32)


def test_load_taesd_corrupt_weights_is_a_one_line_model_error(tmp_path: Path) -> None:
    build_random_taesd(0).save_pretrained(tmp_path, safe_serialization=True)
    (tmp_path / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="cannot load TAESD") as caught:
        load_taesd(str(tmp_path), torch.device("cpu"), torch.float32)
    assert "\n" not in caught.value.message


def test_load_taesd_rejects_a_non_sd_latent_space(tmp_path: Path) -> None:
    AutoencoderTiny(
        encoder_block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8),
        num_encoder_blocks=(1, 1, 1, 1),
        num_decoder_blocks=(1, 1, 1, 1),
        latent_channels=16,
    ).save_pretrained(tmp_path, safe_serialization=True)
    with pytest.raises(ModelError, match="16 latent channels"):
        load_taesd(str(tmp_path), torch.device("cpu"), torch.float32)


def test_shrunk_latents_keep_the_picture(
    demo_taesd: AutoencoderTiny, make_latents: Callable[..., torch.Tensor]
) -> None:
    """A 512 px image previewed at 256 px: decoding latents shrunk to 32x32 (a quarter of the work)
    against decoding all 64x64 latents and shrinking the picture. On image-like (smooth) latents the
    two must agree closely; the bound leaves room for the random demo weights."""
    scores = []
    for seed in range(3):
        latents = make_latents(64, 64, seed=seed)
        shrunk = TaesdDecoder(demo_taesd, shrink=True).decode(latents, 256)
        full = TaesdDecoder(demo_taesd, shrink=False).decode(latents, 256)
        assert shrunk.shape == full.shape == (256, 256, 3)
        scores.append(_psnr(shrunk, full))
    assert min(scores) > 35.0, scores  # about 40 dB measured; white-noise latents still give 34

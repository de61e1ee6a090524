"""The demo model's own VAE and TAESD, loaded once for the preview tests (fp32, CPU)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from diffusers.models import AutoencoderKL, AutoencoderTiny

from sdworker.previews.taesd import load_taesd


@pytest.fixture(scope="session")
def demo_vae(demo_model_dir: Path) -> AutoencoderKL:
    vae = AutoencoderKL.from_pretrained(str(demo_model_dir / "vae"), use_safetensors=True)
    assert isinstance(vae, AutoencoderKL)
    return vae.eval()


@pytest.fixture(scope="session")
def demo_taesd(demo_model_dir: Path) -> AutoencoderTiny:
    return load_taesd(str(demo_model_dir / "taesd"), torch.device("cpu"), torch.float32)


def smooth_latents(height: int, width: int, seed: int = 0, batch: int = 1) -> torch.Tensor:
    """Latents with the spatial smoothness of a real image's (SD latents of photos vary slowly at the
    1/8 scale): random values on a coarse grid, enlarged bilinearly; std about 1 like the loop's."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, 4, max(1, height // 8), max(1, width // 8), generator=generator)
    return torch.nn.functional.interpolate(coarse, size=(height, width), mode="bilinear", align_corners=False)


@pytest.fixture
def make_latents() -> Callable[..., torch.Tensor]:
    """``make_latents(height, width, seed=0, batch=1)`` -> smooth (batch, 4, height, width) latents."""
    return smooth_latents

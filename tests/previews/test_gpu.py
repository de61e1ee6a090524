"""fp16 on CUDA: every decoder runs in the model's device and dtype and agrees with fp32 on the CPU."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from diffusers.models import AutoencoderKL, AutoencoderTiny

from sdworker.domain.families import family_facts
from sdworker.previews.decoders import create_decoder

SD1 = family_facts("sd1").latent.coefficients

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("method", ["latent2rgb", "taesd", "vae"])
def test_fp16_cuda_matches_fp32_cpu(
    method: str,
    demo_vae: AutoencoderKL,
    demo_taesd: AutoencoderTiny,
    make_latents: Callable[..., torch.Tensor],
) -> None:
    cuda = torch.device("cuda")
    latents = make_latents(32, 48, seed=6)
    on_cpu = create_decoder(method, latent2rgb=SD1, vae=demo_vae, taesd=demo_taesd).decode(latents, 256)
    vae_half = copy.deepcopy(demo_vae).to(cuda, torch.float16)
    taesd_half = copy.deepcopy(demo_taesd).to(cuda, torch.float16)
    decoder = create_decoder(method, latent2rgb=SD1, vae=vae_half, taesd=taesd_half)
    latents_half = latents.to(cuda, torch.float16)
    before = latents_half.clone()
    on_gpu = decoder.decode(latents_half, 256)
    assert on_gpu.shape == on_cpu.shape == (171, 256, 3)
    assert torch.equal(latents_half, before)
    difference = np.abs(on_gpu.astype(int) - on_cpu.astype(int))
    assert difference.mean() < 2.0 and difference.max() <= 16

"""``--taesd FAMILY=DIR``: a family's own tiny decoder (TAEF1 for FLUX.1, here a random 16-channel
``AutoencoderTiny``) serves that family's previews, fed the unpacked latents; the SD models keep theirs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from diffusers import AutoencoderTiny

from sdworker.domain.request import GenerationRequest
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.errors import ModelError
from sdworker.previews.taesd import load_taesd
from sdworker.settings import Settings


@pytest.fixture(scope="module")
def taef1(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    folder = tmp_path_factory.mktemp("taef1")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        tiny = AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8),
                               num_encoder_blocks=(1, 1, 1, 1), num_decoder_blocks=(1, 1, 1, 1), latent_channels=16)
    tiny.save_pretrained(folder, safe_serialization=True)
    return folder


def test_flux1_previews_decode_with_the_family_taesd(demo_cache_dir: Path, taef1: Path) -> None:
    engine = DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu",
                                      taesd=(f"flux1={taef1}",)))
    shown: list[tuple[np.ndarray, np.ndarray]] = []

    def on_step(view: Any) -> None:  # TAEF1 takes (B, 16, h, w): it fails on the loop's packed tokens
        shown.append((view.render_preview("taesd", 64).pixels, view.render_preview("latent2rgb", 64).pixels))

    engine.generate(GenerationRequest("a cat", model="demo-flux1", seed=1, width=64, height=64,
                                      num_inference_steps=2, guidance_scale=3.5), on_step=on_step)
    assert len(shown) == 2 and shown[0][0].shape == (64, 64, 3)
    assert not np.array_equal(shown[0][0], shown[0][1])  # TAEF1's picture, not the linear one
    slot = engine._slot(engine.library.model("demo-flux1"), None)
    assert slot.decoders["taesd"].taesd.config.latent_channels == 16
    assert "taesd" in slot.preview_methods
    sd = engine._slot(engine.library.model("demo-sd15"), None)  # keeps its own taesd/ folder (4 channels)
    assert sd.decoders["taesd"].taesd.config.latent_channels == 4


def test_a_tiny_decoder_of_other_latents_is_refused(taef1: Path) -> None:
    import torch

    with pytest.raises(ModelError, match="16 latent channels; the model's latents have 4"):
        load_taesd(str(taef1), torch.device("cpu"), torch.float32)

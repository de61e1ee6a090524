"""The demo model: a tiny random-weight Stable Diffusion 1.x-style model, built locally and seeded.

It makes pictures of noise, but it runs every code path a real SD 1.x checkpoint runs (UNet with cross
attention, an 8x VAE, a CLIP text encoder and tokenizer, PNDM like SD 1.5 ships) in well under a second
per image on a CPU, so tests and ``make run`` need no download. Sizes follow diffusers' own
``get_dummy_components`` for Stable Diffusion, except the VAE, which has four blocks so latents are 1/8
of the image like the real one (previews and size checks then behave as they will on real models).

Layout of the folder ``write_demo_model`` writes::

    model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/   diffusers' layout
    demo.safetensors   the same weights in the original (A1111/LDM) single-checkpoint layout
    taesd/             a tiny random AutoencoderTiny for preview tests (save_pretrained layout)

Everything is seeded per component, so the bytes are the same on every build with the same library
versions.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

DEMO_VERSION = "demo-v1"
CHECKPOINT_NAME = "demo.safetensors"
TAESD_DIR = "taesd"
SEED = 1234

# Seeding uses torch's global RNG, so two threads building at once would interleave their draws.
_BUILD_LOCK = threading.Lock()

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,  # 8 latents = 64 px, the demo's natural size
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (8, 16, 32, 32),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}
TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 5,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
# What SD 1.5 ships in scheduler/scheduler_config.json.
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def build_demo_components(seed: int = SEED) -> dict[str, Any]:
    """The demo pipeline's components in memory (fp32, CPU), each built from its own seed."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdworker.engine.clip_tokenizer import build_clip_tokenizer, build_vocab

    vocab, _ = build_vocab()
    tokenizer: Any = build_clip_tokenizer()
    torch.manual_seed(seed)
    unet: Any = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(seed + 1)
    vae: Any = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 2)
    text_config = CLIPTextConfig(
        **TEXT_ENCODER_CONFIG,
        vocab_size=len(vocab),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder: Any = CLIPTextModel(text_config)
    scheduler = PNDMScheduler.from_config(SCHEDULER_CONFIG)
    for module in (unet, vae, text_encoder):
        module.eval()
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def build_demo_taesd(seed: int = SEED) -> Any:
    """A tiny random ``AutoencoderTiny`` (TAESD's shape with 16 instead of 64 channels)."""
    import torch

    try:  # the previews package owns the TAESD builder once it exists; use it so both agree
        from sdworker.previews.taesd import build_random_taesd  # type: ignore[attr-defined,unused-ignore]

        return build_random_taesd(seed)
    except ImportError:
        pass
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed + 3)
    taesd: Any = AutoencoderTiny(
        encoder_block_out_channels=(16, 16, 16, 16),
        decoder_block_out_channels=(16, 16, 16, 16),
        latent_channels=4,
    )
    return taesd.eval()


def write_demo_model(directory: Path) -> Path:
    """Write the demo model into ``directory`` (created; must be empty or missing). Returns it."""
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from sdworker.engine.ldm_layout import to_ldm_checkpoint

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):  # seeding must not disturb the caller's RNG
        components = build_demo_components()
        taesd = build_demo_taesd()
    pipe: Any = StableDiffusionPipeline(**components)
    pipe.save_pretrained(directory, safe_serialization=True)
    _write_slow_tokenizer_files(directory / "tokenizer")
    checkpoint = to_ldm_checkpoint(components["unet"], components["vae"], components["text_encoder"])
    # One metadata key only: safetensors writes a map's keys in hash order, which would change the bytes.
    save_file(checkpoint, str(directory / CHECKPOINT_NAME), metadata={"format": "pt"})
    taesd.save_pretrained(directory / TAESD_DIR, safe_serialization=True)
    return directory


def _write_slow_tokenizer_files(tokenizer_dir: Path) -> None:
    """Also write CLIP's classic ``vocab.json`` + ``merges.txt`` so tools that read those find them."""
    from sdworker.engine.clip_tokenizer import build_vocab

    vocab, merges = build_vocab()
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (tokenizer_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def ensure_demo_model(cache_dir: Path) -> Path:
    """The demo model under ``cache_dir/demo-v1``, built once.

    Safe with several processes at once (pytest workers, a server and a CLI): each builds into its own
    temporary folder beside the target and renames it into place. ``rename`` of a directory is atomic,
    so a reader sees either no model or a whole one; a loser of the race drops its copy.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / DEMO_VERSION
    if (target / "model_index.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{DEMO_VERSION}-", dir=cache_dir))
    try:
        write_demo_model(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / "model_index.json").is_file():
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
    return target

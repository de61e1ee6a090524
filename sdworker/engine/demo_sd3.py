"""``demo-sd3``: SD 3.5's shape at toy sizes (MMDiT with dual-attention and QK norm like 3.5, two CLIP
encoders with projections, T5, the 16-channel VAE with SD3's scaling and shift factors, SD 3.5's
scheduler config), saved in diffusers' layout. Built from configs; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_SD3 = "demo-sd3"

SD3_TRANSFORMER_CONFIG: dict[str, Any] = {
    "sample_size": 8,
    "patch_size": 2,
    "in_channels": 16,
    "num_layers": 2,
    "attention_head_dim": 8,
    "num_attention_heads": 4,
    "joint_attention_dim": 64,  # T5's width; the two CLIPs' 32 + 32 are padded to it
    "caption_projection_dim": 32,  # = heads x head dim
    "pooled_projection_dim": 64,  # the two CLIP projections side by side
    "out_channels": 16,
    "pos_embed_max_size": 64,  # up to 64 patches a side: 1024 px
    "dual_attention_layers": (0,),
    "qk_norm": "rms_norm",
}


def build_demo_sd3_components(seed: int) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from sdworker.engine.clip_tokenizer import build_clip_tokenizer, vocab_size
    from sdworker.engine.demo_flow import FLOW_VAE_CONFIG, build_tiny_t5
    from sdworker.engine.t5_tokenizer import build_t5_tokenizer

    tokenizer: Any = build_clip_tokenizer()
    tokenizer_3 = build_t5_tokenizer()
    clip_config = CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3, vocab_size=vocab_size(),
        projection_dim=32, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    transformer: Any = SD3Transformer2DModel(**SD3_TRANSFORMER_CONFIG)
    torch.manual_seed(seed + 1)
    vae: Any = AutoencoderKL(**FLOW_VAE_CONFIG, scaling_factor=1.5305, shift_factor=0.0609)
    torch.manual_seed(seed + 2)
    text_encoder: Any = CLIPTextModelWithProjection(clip_config)
    torch.manual_seed(seed + 3)
    text_encoder_2: Any = CLIPTextModelWithProjection(clip_config)
    torch.manual_seed(seed + 4)
    text_encoder_3 = build_tiny_t5(tokenizer_3, width=64)
    for module in (transformer, vae, text_encoder, text_encoder_2, text_encoder_3):
        module.eval()
    return {
        "transformer": transformer, "scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0), "vae": vae,
        "text_encoder": text_encoder, "tokenizer": tokenizer, "text_encoder_2": text_encoder_2,
        "tokenizer_2": build_clip_tokenizer(), "text_encoder_3": text_encoder_3, "tokenizer_3": tokenizer_3,
    }


def write_demo_sd3(models: Path, seed: int) -> None:
    from diffusers import StableDiffusion3Pipeline

    pipe: Any = StableDiffusion3Pipeline(**build_demo_sd3_components(seed))
    pipe.save_pretrained(models / DEMO_SD3, safe_serialization=True)

"""``demo-zimage``: Z-Image's shape at toy sizes (single-stream DiT with refiner layers, a Qwen3 text
encoder and a Qwen tokenizer with its chat template, FLUX.1's VAE factors, Z-Image-Turbo's scheduler
config), saved in diffusers' layout. Built from configs; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_ZIMAGE = "demo-zimage"

ZIMAGE_TRANSFORMER_CONFIG: dict[str, Any] = {
    "all_patch_size": (2,),
    "all_f_patch_size": (1,),
    "in_channels": 16,
    "dim": 32,
    "n_layers": 2,
    "n_refiner_layers": 1,
    "n_heads": 2,
    "n_kv_heads": 2,
    "cap_feat_dim": 32,  # the text encoder's width
    "axes_dims": [4, 6, 6],  # sums to dim / n_heads
    "axes_lens": [256, 128, 128],
}


def build_tiny_qwen3(tokenizer: Any, width: int = 32) -> Any:
    from transformers import Qwen3Config, Qwen3Model

    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=width, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
    )
    return Qwen3Model(config)


def build_demo_zimage_components(seed: int) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImageTransformer2DModel

    from sdworker.engine.demo_flow import FLOW_VAE_CONFIG
    from sdworker.engine.qwen_tokenizer import build_qwen_tokenizer

    tokenizer = build_qwen_tokenizer()
    torch.manual_seed(seed)
    transformer: Any = ZImageTransformer2DModel(**ZIMAGE_TRANSFORMER_CONFIG)
    torch.manual_seed(seed + 1)
    vae: Any = AutoencoderKL(**FLOW_VAE_CONFIG, scaling_factor=0.3611, shift_factor=0.1159)
    torch.manual_seed(seed + 2)
    text_encoder = build_tiny_qwen3(tokenizer)
    for module in (transformer, vae, text_encoder):
        module.eval()
    return {"scheduler": FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False), "vae": vae,
            "text_encoder": text_encoder, "tokenizer": tokenizer, "transformer": transformer}


def write_demo_zimage(models: Path, seed: int) -> None:
    from diffusers import ZImagePipeline

    pipe: Any = ZImagePipeline(**build_demo_zimage_components(seed))
    pipe.save_pretrained(models / DEMO_ZIMAGE, safe_serialization=True)

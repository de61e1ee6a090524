"""Pipelines for benchmarks, built in memory with random weights: no download, no files.

``build_sd15_pipeline``: the real Stable Diffusion 1.5 architecture (UNet 860 M parameters, the
83 M-parameter VAE, CLIP ViT-L/14's 123 M-parameter text encoder) with the project's own tokenizer, so
timings are those of SD 1.5 whatever the weights. ``build_demo_pipeline``: the demo model.
"""

from __future__ import annotations

from typing import Any

SD15_UNET: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280),
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 768,
    "attention_head_dim": 8,
}
SD15_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 2,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}
SD15_TEXT_ENCODER: dict[str, Any] = {  # openai/clip-vit-large-patch14's text half
    "vocab_size": 49408,
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "projection_dim": 768,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}


def build_sd15_pipeline(seed: int = 0) -> Any:
    """SD 1.5's architecture with seeded random weights, fp32 on the CPU (move it yourself)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdworker.engine.clip_tokenizer import build_clip_tokenizer
    from sdworker.engine.demo_model import SCHEDULER_CONFIG

    tokenizer: Any = build_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet: Any = UNet2DConditionModel(**SD15_UNET)
        vae: Any = AutoencoderKL(**SD15_VAE)
        config = CLIPTextConfig(**SD15_TEXT_ENCODER, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        text_encoder: Any = CLIPTextModel(config)
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=PNDMScheduler.from_config(SCHEDULER_CONFIG), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )


def build_demo_pipeline() -> Any:
    """The demo model's pipeline, in memory (the same weights ``sdworker demo-model`` writes)."""
    from diffusers import StableDiffusionPipeline

    from sdworker.engine.demo_model import build_demo_components

    return StableDiffusionPipeline(**build_demo_components())


ARCHS = {"demo": build_demo_pipeline, "sd15": build_sd15_pipeline}

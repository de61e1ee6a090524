"""Pipelines for benchmarks, built in memory with random weights: no download, no files.

``build_sd15_pipeline``: the real Stable Diffusion 1.5 architecture (UNet 860 M parameters, the
83 M-parameter VAE, CLIP ViT-L/14's 123 M-parameter text encoder) with the project's own tokenizer, so
timings are those of SD 1.5 whatever the weights. ``build_sdxl_pipeline``: SDXL base's architecture
(UNet 2.6 B parameters, CLIP ViT-L and OpenCLIP ViT-bigG text encoders, the same VAE shape), for GPU
runs at 1024 px. ``build_demo_pipeline``: the demo model.
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


SDXL_UNET: dict[str, Any] = {  # stabilityai/stable-diffusion-xl-base-1.0's unet/config.json
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280),
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    "transformer_layers_per_block": (1, 2, 10),
    "attention_head_dim": (5, 10, 20),
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
}
SDXL_TEXT_ENCODER_2: dict[str, Any] = {  # OpenCLIP ViT-bigG/14's text half
    "vocab_size": 49408,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "projection_dim": 1280,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}


def build_sdxl_pipeline(seed: int = 0) -> Any:
    """SDXL base's architecture with seeded random weights, fp32 on the CPU (move it yourself; about
    3.5 B parameters, 14 GB in fp32)."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sdworker.engine.clip_tokenizer import build_clip_tokenizer

    tokenizer: Any = build_clip_tokenizer()
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet: Any = UNet2DConditionModel(**SDXL_UNET)
        vae: Any = AutoencoderKL(**{**SD15_VAE, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True})
        text_encoder: Any = CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER, **ids))
        text_encoder_2: Any = CLIPTextModelWithProjection(CLIPTextConfig(**SDXL_TEXT_ENCODER_2, **ids))
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval().requires_grad_(False)
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="leading", steps_offset=1
    )
    return StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=build_clip_tokenizer(), unet=unet, scheduler=scheduler,
    )


def build_demo_pipeline() -> Any:
    """The demo model's pipeline, in memory (the same weights ``sdworker demo-model`` writes)."""
    from diffusers import StableDiffusionPipeline

    from sdworker.engine.demo_model import build_demo_components

    return StableDiffusionPipeline(**build_demo_components())


ARCHS = {"demo": build_demo_pipeline, "sd15": build_sd15_pipeline, "sdxl": build_sdxl_pipeline}

"""Flow-matching pipelines for benchmarks at their real sizes, random weights, no download (the GPU table,
``bench/gpu.py``). Build them inside ``torch.device("cuda")`` and a default dtype of bf16 to initialise
on the device (``gpu.py``'s ``on_device``); on the CPU at these sizes they would take minutes and tens
of GB.

- ``build_flux1_dev_pipeline``: FLUX.1 dev: transformer 12 B (19 double + 38 single blocks, width 3072),
  T5-XXL encoder 4.7 B, CLIP ViT-L text 123 M, the 16-channel VAE.
- ``build_zimage_turbo_pipeline``: Z-Image-Turbo: transformer 6 B (30 blocks, width 3840), Qwen3 4 B
  text encoder, the FLUX VAE.

Tokenizers are the project's own (built locally); their vocabularies are smaller than the real ones,
which changes nothing of the compute.
"""

from __future__ import annotations

from typing import Any

from bench.archs import SD15_TEXT_ENCODER

FLUX1_DEV_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
    "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
}
T5_XXL_ENCODER: dict[str, Any] = {
    "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
    "relative_attention_num_buckets": 32, "feed_forward_proj": "gated-gelu", "decoder_start_token_id": 0,
    "pad_token_id": 0, "eos_token_id": 1,
}
FLUX_VAE: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "block_out_channels": (128, 256, 512, 512),
    "down_block_types": ("DownEncoderBlock2D",) * 4, "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 16, "layers_per_block": 2, "sample_size": 1024, "scaling_factor": 0.3611,
    "shift_factor": 0.1159, "use_quant_conv": False, "use_post_quant_conv": False,
}
ZIMAGE_TURBO_TRANSFORMER: dict[str, Any] = {
    "all_patch_size": (2,), "all_f_patch_size": (1,), "in_channels": 16, "dim": 3840, "n_layers": 30,
    "n_refiner_layers": 2, "n_heads": 30, "n_kv_heads": 30, "cap_feat_dim": 2560, "axes_dims": [32, 48, 48],
    "axes_lens": [1024, 512, 512],
}
QWEN3_4B: dict[str, Any] = {
    "vocab_size": 151936, "hidden_size": 2560, "intermediate_size": 9728, "num_hidden_layers": 36,
    "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
}
FLUX1_SCHEDULER: dict[str, Any] = {
    "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
}


def build_flux1_dev_pipeline() -> Any:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from sdworker.engine.clip_tokenizer import build_clip_tokenizer
    from sdworker.engine.t5_tokenizer import build_t5_tokenizer

    tokenizer = build_clip_tokenizer()
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    parts: dict[str, Any] = {
        "transformer": FluxTransformer2DModel(**FLUX1_DEV_TRANSFORMER),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**SD15_TEXT_ENCODER, **ids)),
        "text_encoder_2": T5EncoderModel(T5Config(**T5_XXL_ENCODER)),  # type: ignore[call-arg]
        "vae": AutoencoderKL(**FLUX_VAE),
    }
    for module in parts.values():
        module.eval().requires_grad_(False)
    return FluxPipeline(**parts, tokenizer=tokenizer, tokenizer_2=build_t5_tokenizer(),
                        scheduler=FlowMatchEulerDiscreteScheduler(**FLUX1_SCHEDULER))


def build_zimage_turbo_pipeline() -> Any:
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, ZImagePipeline, ZImageTransformer2DModel
    from transformers import Qwen3Config, Qwen3Model

    from sdworker.engine.qwen_tokenizer import build_qwen_tokenizer

    tokenizer = build_qwen_tokenizer()
    parts: dict[str, Any] = {
        "transformer": ZImageTransformer2DModel(**ZIMAGE_TURBO_TRANSFORMER),
        "text_encoder": Qwen3Model(Qwen3Config(**QWEN3_4B, pad_token_id=tokenizer.pad_token_id)),
        "vae": AutoencoderKL(**FLUX_VAE),
    }
    for module in parts.values():
        module.eval().requires_grad_(False)
    return ZImagePipeline(**parts, tokenizer=tokenizer,
                          scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=False))


def build_tiny_flux1_pipeline() -> Any:
    from diffusers import FluxPipeline

    from sdworker.engine.demo_flow import build_demo_flux1_components

    return FluxPipeline(**build_demo_flux1_components(1234))


def build_tiny_zimage_pipeline() -> Any:
    from diffusers import ZImagePipeline

    from sdworker.engine.demo_zimage import build_demo_zimage_components

    return ZImagePipeline(**build_demo_zimage_components(1234))


def build_tiny_sdxl_pipeline() -> Any:
    from diffusers import StableDiffusionXLPipeline

    from sdworker.engine.demo_model import build_demo_sdxl_components

    return StableDiffusionXLPipeline(**build_demo_sdxl_components())

"""Flow-matching pipelines for benchmarks at their real sizes, random weights, no download (the GPU table,
``bench/gpu.py``). Build them inside ``torch.device("cuda")`` and a default dtype of bf16 to initialise
on the device (``gpu.py``'s ``on_device``); on the CPU at these sizes they would take minutes and tens
of GB.

- ``build_flux1_dev_pipeline``: FLUX.1 dev: transformer 12 B (19 double + 38 single blocks, width 3072),
  T5-XXL encoder 4.7 B, CLIP ViT-L text 123 M, the 16-channel VAE.
- ``build_zimage_turbo_pipeline``: Z-Image-Turbo: transformer 6 B (30 blocks, width 3840), Qwen3 4 B
  text encoder, the FLUX VAE.
- ``build_sd35_large_pipeline``: SD 3.5 large: MMDiT 8 B (38 blocks), CLIP-L, CLIP-G, T5-XXL, its VAE.
- ``build_qwenimage_pipeline``: Qwen-Image: MMDiT 20 B (60 blocks), Qwen2.5-VL 7 B's text model, Wan's VAE.
- ``build_flux2_klein_pipeline``: FLUX.2 klein (4 B shape), Qwen3 4 B, the FLUX.2 VAE.

``FLOW_ARCHS`` maps ``bench/engine.py --arch`` to these and to the tiny demo builders (``--tiny``).

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


# SD 3.5 large (stabilityai/stable-diffusion-3.5-large transformer/config.json): an 8 B MMDiT, 38 blocks.
SD35_LARGE_TRANSFORMER: dict[str, Any] = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 38, "attention_head_dim": 64,
    "num_attention_heads": 38, "joint_attention_dim": 4096, "caption_projection_dim": 2432,
    "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192, "qk_norm": "rms_norm",
}
CLIP_G_TEXT_ENCODER: dict[str, Any] = {
    "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32, "num_attention_heads": 20,
    "projection_dim": 1280, "hidden_act": "gelu", "vocab_size": 49408, "max_position_embeddings": 77,
}
SD3_VAE: dict[str, Any] = {**FLUX_VAE, "scaling_factor": 1.5305, "shift_factor": 0.0609}
# Qwen-Image (Qwen/Qwen-Image transformer/config.json): a 20 B MMDiT, 60 blocks; its encoder is
# Qwen2.5-VL 7B (the text model's sizes below; a small vision tower, unused by text-to-image).
QWENIMAGE_TRANSFORMER: dict[str, Any] = {
    "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 60, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 3584, "guidance_embeds": False, "axes_dims_rope": (16, 56, 56),
}
QWEN25_VL_7B_TEXT: dict[str, Any] = {
    "vocab_size": 152064, "hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
    "num_attention_heads": 28, "num_key_value_heads": 4, "max_position_embeddings": 128000,
    "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
}
# FLUX.2 klein 4B: 5 double and 20 single blocks of width 3072 over a Qwen3 4B encoder (three of its
# layers side by side: 7680). The shape of the published klein 4B; check against its config.json before
# quoting a figure as that model's.
FLUX2_KLEIN_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 128, "num_layers": 5, "num_single_layers": 20, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 3 * 2560, "timestep_guidance_channels": 256,
    "axes_dims_rope": (32, 32, 32, 32), "guidance_embeds": False,
}


def build_sd35_large_pipeline() -> Any:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from sdworker.engine.clip_tokenizer import build_clip_tokenizer
    from sdworker.engine.t5_tokenizer import build_t5_tokenizer

    tokenizer = build_clip_tokenizer()
    ids = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
           "pad_token_id": tokenizer.pad_token_id}
    clip_l = {**SD15_TEXT_ENCODER, "projection_dim": 768}
    parts: dict[str, Any] = {
        "transformer": SD3Transformer2DModel(**SD35_LARGE_TRANSFORMER),
        "text_encoder": CLIPTextModelWithProjection(CLIPTextConfig(**clip_l, **ids)),
        "text_encoder_2": CLIPTextModelWithProjection(CLIPTextConfig(**CLIP_G_TEXT_ENCODER, **ids)),
        "text_encoder_3": T5EncoderModel(T5Config(**T5_XXL_ENCODER)),  # type: ignore[call-arg]
        "vae": AutoencoderKL(**SD3_VAE),
    }
    for module in parts.values():
        module.eval().requires_grad_(False)
    return StableDiffusion3Pipeline(**parts, tokenizer=tokenizer, tokenizer_2=build_clip_tokenizer(),
                                    tokenizer_3=build_t5_tokenizer(),
                                    scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))


def build_qwenimage_pipeline() -> Any:
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from sdworker.engine.demo_qwenimage import QWENIMAGE_SCHEDULER_CONFIG
    from sdworker.engine.qwen_tokenizer import build_qwen_tokenizer

    tokenizer = build_qwen_tokenizer()
    config = Qwen2_5_VLConfig(text_config=QWEN25_VL_7B_TEXT, vision_config={"depth": 1, "hidden_size": 64,
                                                                               "out_hidden_size": 3584})
    parts: dict[str, Any] = {
        "transformer": QwenImageTransformer2DModel(**QWENIMAGE_TRANSFORMER),
        "text_encoder": Qwen2_5_VLForConditionalGeneration(config),
        "vae": AutoencoderKLQwenImage(),  # the class defaults are Qwen-Image's (Wan 2.1's) VAE
    }
    for module in parts.values():
        module.eval().requires_grad_(False)
    return QwenImagePipeline(**parts, tokenizer=tokenizer,
                             scheduler=FlowMatchEulerDiscreteScheduler(**QWENIMAGE_SCHEDULER_CONFIG))


def build_flux2_klein_pipeline() -> Any:
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from sdworker.engine.demo_flux2 import FLUX2_SCHEDULER_CONFIG
    from sdworker.engine.qwen_tokenizer import build_qwen_tokenizer

    tokenizer = build_qwen_tokenizer()
    parts: dict[str, Any] = {
        "transformer": Flux2Transformer2DModel(**FLUX2_KLEIN_TRANSFORMER),
        "text_encoder": Qwen3ForCausalLM(Qwen3Config(**QWEN3_4B, pad_token_id=tokenizer.pad_token_id)),
        "vae": AutoencoderKLFlux2(),  # the class defaults are FLUX.2's VAE
    }
    for module in parts.values():
        module.eval().requires_grad_(False)
    return Flux2KleinPipeline(**parts, tokenizer=tokenizer, is_distilled=True,
                              scheduler=FlowMatchEulerDiscreteScheduler(**FLUX2_SCHEDULER_CONFIG))


def build_tiny_sd3_pipeline() -> Any:
    from diffusers import StableDiffusion3Pipeline

    from sdworker.engine.demo_sd3 import build_demo_sd3_components

    return StableDiffusion3Pipeline(**build_demo_sd3_components(1234))


def build_tiny_qwenimage_pipeline() -> Any:
    from diffusers import QwenImagePipeline

    from sdworker.engine.demo_qwenimage import build_demo_qwenimage_components

    return QwenImagePipeline(**build_demo_qwenimage_components(1234))


def build_tiny_flux2_pipeline() -> Any:
    from diffusers import Flux2KleinPipeline

    from sdworker.engine.demo_flux2 import build_demo_flux2_components

    return Flux2KleinPipeline(**build_demo_flux2_components(1234))


# --arch NAME of bench/engine.py: (family, the real-size builder, the tiny builder, native size).
FLOW_ARCHS: dict[str, tuple[str, Any, Any, int]] = {
    "flux1": ("flux1", build_flux1_dev_pipeline, build_tiny_flux1_pipeline, 1024),
    "sd3": ("sd3", build_sd35_large_pipeline, build_tiny_sd3_pipeline, 1024),
    "zimage": ("zimage", build_zimage_turbo_pipeline, build_tiny_zimage_pipeline, 1024),
    "qwenimage": ("qwenimage", build_qwenimage_pipeline, build_tiny_qwenimage_pipeline, 1328),
    "flux2": ("flux2", build_flux2_klein_pipeline, build_tiny_flux2_pipeline, 1024),
}

"""``demo-flux2``: FLUX.2 klein's shape at toy sizes (the FLUX.2 transformer without a guidance input,
a Qwen3 text encoder deep enough for the pipeline's hidden-state layers 9, 18 and 27, the project's Qwen
tokenizer with its chat template, the 32-channel FLUX.2 VAE with non-trivial batch-norm statistics, and
klein's scheduler config), saved in diffusers' layout with ``is_distilled`` as the step-distilled klein
ships. Built from configs; nothing is downloaded."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_FLUX2 = "demo-flux2"

# What FLUX.2 klein ships in scheduler/scheduler_config.json (the pipeline computes ``mu`` itself).
FLUX2_SCHEDULER_CONFIG: dict[str, Any] = {
    "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
    "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True,
}
TEXT_WIDTH = 16  # the transformer's joint_attention_dim is three layers' hidden states side by side


def build_demo_flux2_components(seed: int) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Transformer2DModel
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from sdworker.engine.qwen_tokenizer import build_qwen_tokenizer

    tokenizer = build_qwen_tokenizer()
    torch.manual_seed(seed)
    transformer: Any = Flux2Transformer2DModel(
        patch_size=1, in_channels=128, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=3 * TEXT_WIDTH, timestep_guidance_channels=32,
        axes_dims_rope=(4, 4, 4, 4), guidance_embeds=False,
    )
    torch.manual_seed(seed + 1)
    vae: Any = AutoencoderKLFlux2(
        block_out_channels=(8, 16, 32, 32), layers_per_block=1, latent_channels=32, norm_num_groups=8,
        sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
    )
    with torch.no_grad():  # a trained VAE's statistics, not BatchNorm's fresh 0 and 1 (which would hide a bug)
        vae.bn.running_mean.normal_(0.0, 0.5)
        vae.bn.running_var.uniform_(0.5, 2.0)
    torch.manual_seed(seed + 2)
    config = Qwen3Config(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=16, num_hidden_layers=27,
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None,
    )
    text_encoder: Any = Qwen3ForCausalLM(config)
    for module in (transformer, vae, text_encoder):
        module.eval()
    return {"scheduler": FlowMatchEulerDiscreteScheduler(**FLUX2_SCHEDULER_CONFIG), "vae": vae,
            "text_encoder": text_encoder, "tokenizer": tokenizer, "transformer": transformer, "is_distilled": True}


def write_demo_flux2(models: Path, seed: int) -> None:
    from diffusers import Flux2KleinPipeline

    pipe: Any = Flux2KleinPipeline(**build_demo_flux2_components(seed))
    pipe.save_pretrained(models / DEMO_FLUX2, safe_serialization=True)

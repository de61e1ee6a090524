"""Tiny random-weight models of the flow-matching families for the demo bundle (``demo_model``).

Like the SD demos, they make pictures of noise but run every code path the real models run: saved in
diffusers' layout (``model_index.json``, ``transformer/``, ``vae/``, ``text_encoder*/``,
``tokenizer*/``, ``scheduler/``), with text encoders and tokenizers built here from configs (no hub).

``demo-flux1``: FLUX.1 dev's shape (guidance-embedding transformer, CLIP + T5, 16-channel VAE with
FLUX's scaling and shift factors, FLUX dev's scheduler config) at a few hundred thousand parameters.
Beside it the bundle holds ``demo-flux1-transformer.safetensors``, the same transformer alone in one
file (the form FLUX fine-tunes are published in; the library completes it from ``demo-flux1``), and
``loras/demo-flux1-kohya.safetensors``, a LoRA in kohya's ``lora_unet_double_blocks_*`` layout.

The single file uses diffusers' key names, not BFL's: diffusers' BFL converter assumes the real
3072-wide transformer (``inner_dim = 3072``), which a tiny model cannot have; the kohya LoRA leaves
out ``single_blocks_*_linear1`` for the same reason (its converter splits it at 3072).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_FLUX1 = "demo-flux1"
FLUX1_TRANSFORMER_FILE = "demo-flux1-transformer.safetensors"
FLUX1_GGUF_FILE = "demo-flux1-q8.gguf"  # the same transformer in GGUF, Q8_0 (``engine.gguf_file``)
FLUX1_KOHYA_LORA = "demo-flux1-kohya"

# What FLUX.1 dev ships in scheduler/scheduler_config.json.
FLUX1_SCHEDULER_CONFIG: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "max_image_seq_len": 4096,
    "max_shift": 1.15,
    "num_train_timesteps": 1000,
    "shift": 3.0,
    "use_dynamic_shifting": True,
}
FLUX1_TRANSFORMER_CONFIG: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,  # 16 latent channels x a 2x2 patch
    "num_layers": 2,
    "num_single_layers": 2,
    "attention_head_dim": 16,
    "num_attention_heads": 2,
    "joint_attention_dim": 32,  # the T5 encoder's width
    "pooled_projection_dim": 32,  # the CLIP encoder's width
    "axes_dims_rope": (4, 4, 8),  # sums to attention_head_dim
    "guidance_embeds": True,  # dev; schnell has none
}
FLOW_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (8, 16, 32, 32),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 16,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
}


def build_tiny_t5(tokenizer: Any, width: int = 32) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(  # type: ignore[call-arg]
        vocab_size=len(tokenizer), d_model=width, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
    )
    return T5EncoderModel(config)


def build_tiny_clip(tokenizer: Any, width: int = 32) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdworker.engine.clip_tokenizer import vocab_size

    config = CLIPTextConfig(
        hidden_size=width, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        vocab_size=vocab_size(), projection_dim=width, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_demo_flux1_components(seed: int) -> dict[str, Any]:
    """FLUX.1 dev's components at toy sizes, fp32 on the CPU, each from its own seed."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel

    from sdworker.engine.clip_tokenizer import build_clip_tokenizer
    from sdworker.engine.t5_tokenizer import build_t5_tokenizer

    tokenizer, tokenizer_2 = build_clip_tokenizer(), build_t5_tokenizer()
    torch.manual_seed(seed)
    transformer: Any = FluxTransformer2DModel(**FLUX1_TRANSFORMER_CONFIG)
    torch.manual_seed(seed + 1)
    vae: Any = AutoencoderKL(**FLOW_VAE_CONFIG, scaling_factor=0.3611, shift_factor=0.1159)
    torch.manual_seed(seed + 2)
    text_encoder = build_tiny_clip(tokenizer)
    torch.manual_seed(seed + 3)
    text_encoder_2 = build_tiny_t5(tokenizer_2)
    for module in (transformer, vae, text_encoder, text_encoder_2):
        module.eval()
    return {
        "scheduler": FlowMatchEulerDiscreteScheduler(**FLUX1_SCHEDULER_CONFIG),
        "vae": vae, "text_encoder": text_encoder, "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2, "tokenizer_2": tokenizer_2, "transformer": transformer,
    }


def build_flux1_kohya_lora(transformer: Any, seed: int, rank: int = 4, scale: float = 0.3) -> dict[str, Any]:
    """A LoRA for ``transformer`` in kohya's FLUX layout (``lora_unet_double_blocks_{i}_img_attn_qkv``
    and friends, with ``alpha``), random and non-zero so it visibly changes the image."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    width = int(transformer.inner_dim)
    targets: list[tuple[str, int, int]] = []
    for i in range(len(transformer.transformer_blocks)):
        for stream in ("img", "txt"):
            targets += [(f"double_blocks_{i}_{stream}_attn_qkv", width, 3 * width),
                        (f"double_blocks_{i}_{stream}_attn_proj", width, width)]
    for i in range(len(transformer.single_transformer_blocks)):
        targets.append((f"single_blocks_{i}_linear2", width + 4 * width, width))
    state: dict[str, Any] = {}
    for name, fan_in, fan_out in targets:
        key = f"lora_unet_{name}"
        state[f"{key}.lora_down.weight"] = torch.randn(rank, fan_in, generator=generator) * scale
        state[f"{key}.lora_up.weight"] = torch.randn(fan_out, rank, generator=generator) * scale
        state[f"{key}.alpha"] = torch.tensor(float(rank))
    return state


def write_demo_flux1(models: Path, loras: Path, seed: int) -> None:
    """``models/demo-flux1/``, ``models/demo-flux1-transformer.safetensors``, the same transformer as
    ``models/demo-flux1-q8.gguf`` and the kohya LoRA."""
    from diffusers import FluxPipeline
    from safetensors.torch import save_file

    components = build_demo_flux1_components(seed)
    pipe: Any = FluxPipeline(**components)
    pipe.save_pretrained(models / DEMO_FLUX1, safe_serialization=True)
    transformer = components["transformer"]
    state = {key: tensor.contiguous() for key, tensor in transformer.state_dict().items()}
    save_file(state, str(models / FLUX1_TRANSFORMER_FILE), metadata={"format": "pt"})
    from sdworker.engine.gguf_file import write_gguf

    write_gguf(state, models / FLUX1_GGUF_FILE)
    loras.mkdir(parents=True, exist_ok=True)
    save_file(build_flux1_kohya_lora(transformer, seed + 7), str(loras / f"{FLUX1_KOHYA_LORA}.safetensors"),
              metadata={"format": "pt"})

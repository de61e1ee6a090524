"""``demo-qwenimage``: Qwen-Image's shape at toy sizes (MMDiT, a Qwen2.5-VL text encoder with a tiny
vision tower, a Qwen tokenizer with its chat markers, the Wan-style VAE with Qwen-Image's latent mean
and std, Qwen-Image's scheduler config), saved in diffusers' layout. Built from configs; no hub."""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_QWENIMAGE = "demo-qwenimage"

# What Qwen-Image ships in scheduler/scheduler_config.json.
QWENIMAGE_SCHEDULER_CONFIG: dict[str, Any] = {
    "base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 8192, "max_shift": 0.9,
    "num_train_timesteps": 1000, "shift": 1.0, "shift_terminal": 0.02, "time_shift_type": "exponential",
    "use_dynamic_shifting": True,
}


# The markers Qwen-Image-Edit's prompt places an image between; the processor repeats the pad token
# once per image patch and the text encoder puts the vision tower's output there.
VISION_TOKENS = ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>")


def build_demo_qwenimage_components(seed: int, *, vision_tokens: bool = False) -> dict[str, Any]:
    """The modules of ``demo-qwenimage``; with ``vision_tokens`` (the edit models) the tokenizer also
    has Qwen2.5-VL's image markers and the text encoder's config points at them."""
    import torch
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from sdworker.engine.qwen_tokenizer import build_qwen_tokenizer

    tokenizer = build_qwen_tokenizer()
    ids: dict[str, Any] = {}
    if vision_tokens:
        tokenizer.add_special_tokens({"additional_special_tokens": list(VISION_TOKENS)})
        start, pad, end, video = tokenizer.convert_tokens_to_ids(list(VISION_TOKENS))
        ids = {"vision_start_token_id": start, "image_token_id": pad, "vision_end_token_id": end,
               "video_token_id": video}
    config = Qwen2_5_VLConfig(  # type: ignore[call-arg]
        text_config={"vocab_size": len(tokenizer), "hidden_size": 32, "intermediate_size": 37,
                     "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                     "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]}, "rope_theta": 1000000.0,
                     "max_position_embeddings": 2048},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 32,
                       "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2,
                       "fullatt_block_indexes": [0], "window_size": 56},
        vocab_size=len(tokenizer), hidden_size=32, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, **ids,
    )
    torch.manual_seed(seed)
    transformer: Any = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=32, axes_dims_rope=(4, 6, 6),
    )
    torch.manual_seed(seed + 1)
    vae: Any = AutoencoderKLQwenImage(base_dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                      temperal_downsample=[False, True, True])
    torch.manual_seed(seed + 2)
    text_encoder: Any = Qwen2_5_VLForConditionalGeneration(config)
    for module in (transformer, vae, text_encoder):
        module.eval()
    return {"scheduler": FlowMatchEulerDiscreteScheduler(**QWENIMAGE_SCHEDULER_CONFIG), "vae": vae,
            "text_encoder": text_encoder, "tokenizer": tokenizer, "transformer": transformer}


def write_demo_qwenimage(models: Path, seed: int) -> None:
    from diffusers import QwenImagePipeline

    pipe: Any = QwenImagePipeline(**build_demo_qwenimage_components(seed))
    pipe.save_pretrained(models / DEMO_QWENIMAGE, safe_serialization=True)

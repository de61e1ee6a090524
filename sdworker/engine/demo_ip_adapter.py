"""A tiny random IP-Adapter for the demo bundle's SD 1.x model (``demo_model``), in the layout
``--ip-adapter-dir`` reads (h94/IP-Adapter's)::

    ip-adapter/demo-ip-adapter.safetensors   image_proj.* (ImageProjection: proj + norm) and
                                             ip_adapter.{1,3,5...}.to_{k,v}_ip (one pair per cross-attention)
    ip-adapter/image_encoder/                a tiny CLIPVisionModelWithProjection (32 px, 32 wide)

Weights are random and non-zero, so the reference image visibly changes the picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

IP_ADAPTER_DIR = "ip-adapter"
DEMO_IP_ADAPTER = "demo-ip-adapter"
IMAGE_ENCODER_DIR = "image_encoder"
_ENCODER_WIDTH = 32


def build_demo_ip_adapter(unet: Any, seed: int, tokens: int = 4, scale: float = 0.3) -> dict[str, Any]:
    """The adapter's state dict for ``unet``: the projection of the image embedding to ``tokens`` context
    tokens, and a key/value projection beside each cross-attention's (the same shapes as its to_k/to_v)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    width = int(unet.config.cross_attention_dim)
    state: dict[str, Any] = {
        "image_proj.proj.weight": torch.randn(width * tokens, _ENCODER_WIDTH, generator=generator) * scale,
        "image_proj.proj.bias": torch.zeros(width * tokens),
        "image_proj.norm.weight": torch.ones(width),
        "image_proj.norm.bias": torch.zeros(width),
    }
    key = 1  # diffusers numbers every attention processor; the cross-attentions are the odd ones
    for name in unet.attn_processors:
        if name.endswith("attn1.processor"):
            continue
        attention = unet.get_submodule(name.removesuffix(".processor"))
        for projection in ("to_k", "to_v"):
            shape = getattr(attention, projection).weight.shape
            state[f"ip_adapter.{key}.{projection}_ip.weight"] = torch.randn(shape, generator=generator) * scale
        key += 2
    return state


def write_demo_ip_adapter(directory: Path, unet: Any, seed: int) -> None:
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = directory / IP_ADAPTER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=_ENCODER_WIDTH, intermediate_size=37, projection_dim=_ENCODER_WIDTH,
                              num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    CLIPVisionModelWithProjection(config).eval().save_pretrained(folder / IMAGE_ENCODER_DIR, safe_serialization=True)
    save_file(build_demo_ip_adapter(unet, seed + 1), str(folder / f"{DEMO_IP_ADAPTER}.safetensors"),
              metadata={"format": "pt"})

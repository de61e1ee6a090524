"""Tiny random IP-Adapters for the demo bundle's SD 1.x and FLUX.1 models (``demo_model``), in the
layouts ``--ip-adapter-dir`` reads (h94/IP-Adapter's flat one, XLabs' folder one)::

    ip-adapter/demo-ip-adapter.safetensors   image_proj.* (ImageProjection: proj + norm) and
                                             ip_adapter.{1,3,5...}.to_{k,v}_ip (one pair per cross-attention)
    ip-adapter/image_encoder/                a tiny CLIPVisionModelWithProjection (32 px, 32 wide)
    ip-adapter/demo-flux1-ip-adapter/ip_adapter.safetensors
                                             XLabs-AI/flux-ip-adapter's keys: ip_adapter_proj_model.* and
                                             double_blocks.N.processor.ip_adapter_double_stream_{k,v}_proj
                                             (with biases; one pair per double-stream block)
    ip-adapter/demo-flux1-ip-adapter/image_encoder/   its own tiny CLIP vision encoder (XLabs' is CLIP-L,
                                             not h94's ViT-H: each FLUX adapter folder carries its encoder)

Weights are random and non-zero, so the reference image visibly changes the picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

IP_ADAPTER_DIR = "ip-adapter"
DEMO_IP_ADAPTER = "demo-ip-adapter"
DEMO_FLUX1_IP_ADAPTER = "demo-flux1-ip-adapter"
FLUX_WEIGHTS_FILE = "ip_adapter.safetensors"
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


def build_demo_flux1_ip_adapter(transformer_config: dict[str, Any], seed: int, tokens: int = 4,
                                scale: float = 0.3) -> dict[str, Any]:
    """An XLabs-layout FLUX.1 IP-Adapter for a transformer of ``transformer_config``: the image embedding
    projected to ``tokens`` tokens of the T5 width, and a biased key/value projection of them per
    double-stream block (diffusers' ``FluxIPAdapterAttnProcessor``)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    context = int(transformer_config["joint_attention_dim"])
    inner = int(transformer_config["num_attention_heads"]) * int(transformer_config["attention_head_dim"])
    state: dict[str, Any] = {
        "ip_adapter_proj_model.proj.weight": torch.randn(context * tokens, _ENCODER_WIDTH, generator=generator) * scale,
        "ip_adapter_proj_model.proj.bias": torch.randn(context * tokens, generator=generator) * scale,
        "ip_adapter_proj_model.norm.weight": torch.ones(context),
        "ip_adapter_proj_model.norm.bias": torch.zeros(context),
    }
    for block in range(int(transformer_config["num_layers"])):
        for projection in ("k", "v"):
            key = f"double_blocks.{block}.processor.ip_adapter_double_stream_{projection}_proj"
            state[f"{key}.weight"] = torch.randn(inner, context, generator=generator) * scale
            state[f"{key}.bias"] = torch.randn(inner, generator=generator) * scale
    return state


def _write_image_encoder(folder: Path, seed: int) -> None:
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=_ENCODER_WIDTH, intermediate_size=37, projection_dim=_ENCODER_WIDTH,
                              num_hidden_layers=2, num_attention_heads=4, image_size=32, patch_size=8)
    CLIPVisionModelWithProjection(config).eval().save_pretrained(folder, safe_serialization=True)


def write_demo_ip_adapter(directory: Path, unet: Any, seed: int) -> None:
    from safetensors.torch import save_file

    folder = directory / IP_ADAPTER_DIR
    folder.mkdir(parents=True, exist_ok=True)
    _write_image_encoder(folder / IMAGE_ENCODER_DIR, seed)
    save_file(build_demo_ip_adapter(unet, seed + 1), str(folder / f"{DEMO_IP_ADAPTER}.safetensors"),
              metadata={"format": "pt"})


def write_demo_flux1_ip_adapter(directory: Path, transformer_config: dict[str, Any], seed: int) -> None:
    from safetensors.torch import save_file

    folder = directory / IP_ADAPTER_DIR / DEMO_FLUX1_IP_ADAPTER
    folder.mkdir(parents=True, exist_ok=True)
    _write_image_encoder(folder / IMAGE_ENCODER_DIR, seed)
    save_file(build_demo_flux1_ip_adapter(transformer_config, seed + 1), str(folder / FLUX_WEIGHTS_FILE),
              metadata={"format": "pt"})

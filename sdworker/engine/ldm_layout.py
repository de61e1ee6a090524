"""Diffusers state dicts -> the original (LDM / A1111 / civitai) single-checkpoint key layout.

The inverse of what diffusers' ``from_single_file`` does (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``, ``convert_ldm_clip_checkpoint``), written for any block count and
``layers_per_block`` so it fits the demo model's small config as well as SD 1.5's. We need it only to
write the demo checkpoint, so single-file loading is exercised for real; the tests prove the inverse by
loading the file with diffusers and comparing every tensor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."

_UNET_FIXED = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_VAE_FIXED = {"conv_norm_out": "norm_out"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def _rename_head(rest: str, table: Mapping[str, str]) -> str:
    """Rename the leading module path of ``rest`` (e.g. ``norm1.weight``) by ``table``."""
    for old, new in table.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def unet_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """A ``UNet2DConditionModel`` state dict (SD 1.x/2.x style) in LDM keys, without the prefix."""
    per_down = int(config["layers_per_block"]) + 1  # resnets (+ attentions) then one downsampler slot
    per_up = int(config["layers_per_block"]) + 1
    out: dict[str, torch.Tensor] = {}
    up_has_attention = {i: t.startswith("CrossAttn") for i, t in enumerate(config["up_block_types"])}
    for key, tensor in state.items():
        parts = key.split(".")
        head = ".".join(parts[:2])
        if head in _UNET_FIXED or parts[0] in _UNET_FIXED:
            name = head if head in _UNET_FIXED else parts[0]
            out[_UNET_FIXED[name] + key[len(name) :]] = tensor
        elif parts[0] == "down_blocks":
            block, kind = int(parts[1]), parts[2]
            if kind == "downsamplers":  # down_blocks.B.downsamplers.0.conv.W
                out[f"input_blocks.{(block + 1) * per_down}.0.op.{parts[-1]}"] = tensor
                continue
            layer, rest = int(parts[3]), ".".join(parts[4:])
            index = 1 + block * per_down + layer
            if kind == "resnets":
                out[f"input_blocks.{index}.0.{_rename_head(rest, _UNET_RESNET)}"] = tensor
            else:
                out[f"input_blocks.{index}.1.{rest}"] = tensor
        elif parts[0] == "mid_block":
            kind, layer, rest = parts[1], int(parts[2]), ".".join(parts[3:])
            if kind == "resnets":
                out[f"middle_block.{layer * 2}.{_rename_head(rest, _UNET_RESNET)}"] = tensor
            else:
                out[f"middle_block.{layer * 2 + 1}.{rest}"] = tensor
        elif parts[0] == "up_blocks":
            block, kind = int(parts[1]), parts[2]
            if kind == "upsamplers":  # the last layer of the block carries the upsampler
                slot = 2 if up_has_attention[block] else 1
                out[f"output_blocks.{block * per_up + per_up - 1}.{slot}.conv.{parts[-1]}"] = tensor
                continue
            layer, rest = int(parts[3]), ".".join(parts[4:])
            index = block * per_up + layer
            if kind == "resnets":
                out[f"output_blocks.{index}.0.{_rename_head(rest, _UNET_RESNET)}"] = tensor
            else:
                out[f"output_blocks.{index}.1.{rest}"] = tensor
        else:
            raise ValueError(f"no LDM name for UNet key {key!r}")
    return out


def vae_to_ldm(state: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """An ``AutoencoderKL`` state dict in LDM keys, without the prefix. Attention projections become
    1x1 convolutions, as in the original checkpoints."""
    num_up = len(config["up_block_types"])
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        parts = key.split(".")
        if parts[0] in ("quant_conv", "post_quant_conv"):
            out[key] = tensor
            continue
        coder, name = parts[0], parts[1]
        if name in ("conv_in", "conv_out", "conv_norm_out"):
            out[f"{coder}.{_VAE_FIXED.get(name, name)}.{parts[-1]}"] = tensor
        elif name in ("down_blocks", "up_blocks"):
            block, kind = int(parts[2]), parts[3]
            ldm_block = block if name == "down_blocks" else num_up - 1 - block  # LDM counts up-blocks upward
            ldm_name = "down" if name == "down_blocks" else "up"
            if kind in ("downsamplers", "upsamplers"):
                sampler = "downsample" if kind == "downsamplers" else "upsample"
                out[f"{coder}.{ldm_name}.{ldm_block}.{sampler}.conv.{parts[-1]}"] = tensor
            else:  # resnets.J.rest
                rest = ".".join(parts[5:]).replace("conv_shortcut", "nin_shortcut")
                out[f"{coder}.{ldm_name}.{ldm_block}.block.{parts[4]}.{rest}"] = tensor
        elif name == "mid_block":
            kind, layer, rest = parts[2], int(parts[3]), ".".join(parts[4:])
            if kind == "resnets":
                out[f"{coder}.mid.block_{layer + 1}.{rest.replace('conv_shortcut', 'nin_shortcut')}"] = tensor
            else:
                renamed = _rename_head(rest, _VAE_ATTENTION)
                if tensor.ndim == 2:
                    tensor = tensor[:, :, None, None]
                out[f"{coder}.mid.attn_1.{renamed}"] = tensor
        else:
            raise ValueError(f"no LDM name for VAE key {key!r}")
    return out


def to_ldm_checkpoint(
    unet: torch.nn.Module, vae: torch.nn.Module, text_encoder: torch.nn.Module
) -> dict[str, torch.Tensor]:
    """One state dict in the A1111 layout: ``model.diffusion_model.*``, ``first_stage_model.*``,
    ``cond_stage_model.transformer.text_model.*``. Tensors are made contiguous for safetensors."""
    unet_config: Mapping[str, Any] = unet.config  # type: ignore[assignment]
    vae_config: Mapping[str, Any] = vae.config  # type: ignore[assignment]
    checkpoint: dict[str, torch.Tensor] = {}
    for key, tensor in unet_to_ldm(unet.state_dict(), unet_config).items():
        checkpoint[UNET_PREFIX + key] = tensor
    for key, tensor in vae_to_ldm(vae.state_dict(), vae_config).items():
        checkpoint[VAE_PREFIX + key] = tensor
    for key, tensor in text_encoder.state_dict().items():
        # transformers >= 5.6 flattened CLIPTextModel (no ``text_model.`` level); checkpoints keep it.
        if not key.startswith("text_model."):
            key = "text_model." + key
        checkpoint[CLIP_PREFIX + key] = tensor
    return {key: tensor.detach().contiguous().clone() for key, tensor in sorted(checkpoint.items())}

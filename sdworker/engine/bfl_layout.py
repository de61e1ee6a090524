"""FLUX.1 transformer files in Black Forest Labs' layout (``flux1-dev.safetensors``: ``double_blocks.N.
img_attn.qkv``, ``single_blocks.N.linear1``, optionally under ``model.diffusion_model.``), loaded into
diffusers' ``FluxTransformer2DModel``.

The key mapping is diffusers' own (``single_file_utils.convert_flux_transformer_checkpoint_to_diffusers``)
with one difference: diffusers fixes the transformer's width at 3072 (FLUX.1's) to split each single
block's fused ``linear1`` into q, k, v and the MLP; here the width is read from the file (``img_in``'s
rows), so fine-tunes of other widths and the test suite's tiny files load too. At 3072 the result is
diffusers' own, tensor for tensor (``tests/engine/test_bfl_layout.py`` runs both).

The model's structure (layers, single layers, input channels: 64, or 384 for a Fill model; guidance
input or not) comes from the file; the widths of heads and text inputs from the diffusers folder that
completes the file. The model is built on the meta device and takes the file's tensors as they are
(``assign``), so a 12 B transformer is not held twice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

PREFIX = "model.diffusion_model."


def is_bfl_layout(keys: Any) -> bool:
    return any(k.startswith(("double_blocks.", f"{PREFIX}double_blocks.")) for k in keys)


def _swap_scale_shift(weight: torch.Tensor) -> torch.Tensor:
    """BFL's final AdaLayerNorm projects (shift, scale); diffusers' splits (scale, shift)."""
    shift, scale = weight.chunk(2, dim=0)
    return torch.cat([scale, shift], dim=0)


def _blocks(state: dict[str, torch.Tensor], kind: str) -> int:
    numbers = {int(k.split(".", 2)[1]) for k in state if k.startswith(f"{kind}.")}
    return max(numbers) + 1 if numbers else 0


_EMBEDDERS = {  # BFL name -> diffusers name, weights and biases alike
    "time_in.in_layer": "time_text_embed.timestep_embedder.linear_1",
    "time_in.out_layer": "time_text_embed.timestep_embedder.linear_2",
    "vector_in.in_layer": "time_text_embed.text_embedder.linear_1",
    "vector_in.out_layer": "time_text_embed.text_embedder.linear_2",
    "guidance_in.in_layer": "time_text_embed.guidance_embedder.linear_1",
    "guidance_in.out_layer": "time_text_embed.guidance_embedder.linear_2",
    "txt_in": "context_embedder",
    "img_in": "x_embedder",
    "final_layer.linear": "proj_out",
}
_DOUBLE = {  # within double_blocks.N. -> transformer_blocks.N.
    "img_mod.lin": "norm1.linear", "txt_mod.lin": "norm1_context.linear",
    "img_mlp.0": "ff.net.0.proj", "img_mlp.2": "ff.net.2",
    "txt_mlp.0": "ff_context.net.0.proj", "txt_mlp.2": "ff_context.net.2",
    "img_attn.proj": "attn.to_out.0", "txt_attn.proj": "attn.to_add_out",
}
_DOUBLE_NORMS = {
    "img_attn.norm.query_norm.scale": "attn.norm_q.weight", "img_attn.norm.key_norm.scale": "attn.norm_k.weight",
    "txt_attn.norm.query_norm.scale": "attn.norm_added_q.weight",
    "txt_attn.norm.key_norm.scale": "attn.norm_added_k.weight",
}


def bfl_to_diffusers(checkpoint: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A BFL-layout FLUX.1 transformer state dict in diffusers' key names (``checkpoint`` is emptied)."""
    state = {k.removeprefix(PREFIX): checkpoint.pop(k) for k in list(checkpoint)}
    out: dict[str, torch.Tensor] = {}
    for old, new in _EMBEDDERS.items():
        for kind in ("weight", "bias"):
            if f"{old}.{kind}" in state:
                out[f"{new}.{kind}"] = state.pop(f"{old}.{kind}")
    inner = int(out["x_embedder.weight"].shape[0])
    for i in range(_blocks(state, "double_blocks")):
        src, dst = f"double_blocks.{i}.", f"transformer_blocks.{i}."
        for old, new in _DOUBLE.items():
            for kind in ("weight", "bias"):
                out[f"{dst}{new}.{kind}"] = state.pop(f"{src}{old}.{kind}")
        for old, new in _DOUBLE_NORMS.items():
            out[f"{dst}{new}"] = state.pop(f"{src}{old}")
        for stream, names in (("img", ("to_q", "to_k", "to_v")), ("txt", ("add_q_proj", "add_k_proj", "add_v_proj"))):
            for kind in ("weight", "bias"):
                for name, part in zip(names, state.pop(f"{src}{stream}_attn.qkv.{kind}").chunk(3, dim=0), strict=True):
                    out[f"{dst}attn.{name}.{kind}"] = part
    for i in range(_blocks(state, "single_blocks")):
        src, dst = f"single_blocks.{i}.", f"single_transformer_blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}norm.linear.{kind}"] = state.pop(f"{src}modulation.lin.{kind}")
            out[f"{dst}proj_out.{kind}"] = state.pop(f"{src}linear2.{kind}")
            fused = state.pop(f"{src}linear1.{kind}")
            sizes = (inner, inner, inner, fused.shape[0] - 3 * inner)
            for name, part in zip(("attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"), fused.split(sizes, dim=0),
                                  strict=True):
                out[f"{dst}{name}.{kind}"] = part
        out[f"{dst}attn.norm_q.weight"] = state.pop(f"{src}norm.query_norm.scale")
        out[f"{dst}attn.norm_k.weight"] = state.pop(f"{src}norm.key_norm.scale")
    for kind in ("weight", "bias"):
        out[f"norm_out.linear.{kind}"] = _swap_scale_shift(state.pop(f"final_layer.adaLN_modulation.1.{kind}"))
    if state:
        raise ValueError(f"unexpected keys in a BFL FLUX.1 transformer: {', '.join(sorted(state)[:5])}")
    return out


def load_bfl_transformer(path: str, config_folder: Path, dtype: torch.dtype) -> Any:
    """The transformer of ``path`` (BFL layout) as a ``FluxTransformer2DModel``; head and text widths
    from ``config_folder/transformer/config.json``, the structure from the file."""
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import load_file

    state = bfl_to_diffusers(load_file(path))
    config = dict(FluxTransformer2DModel.load_config(str(config_folder), subfolder="transformer"))
    config.update(
        in_channels=int(state["x_embedder.weight"].shape[1]),
        out_channels=int(state["proj_out.weight"].shape[0]),
        num_layers=_blocks(state, "transformer_blocks"),
        num_single_layers=_blocks(state, "single_transformer_blocks"),
        guidance_embeds=any(k.startswith("time_text_embed.guidance_embedder.") for k in state),
    )
    with torch.device("meta"):
        model: Any = FluxTransformer2DModel.from_config(config)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(dtype).eval()

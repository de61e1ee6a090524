"""Which transformer family a LoRA file is for, read from its key names and shapes (torch-free: the
library calls it at submit, before anything loads).

The layouts people publish: diffusers/peft (``transformer.<module>.lora_A.weight``), kohya
(``lora_unet_<module_with_underscores>.lora_down.weight``) and BFL/ai-toolkit
(``diffusion_model.<module>.lora_A.weight``). Some module names belong to one family only:

- FLUX.2: ``to_qkv_mlp_proj`` (its parallel single blocks), ``ff.linear_in``/``linear_out``, the shared
  ``*_stream_modulation`` layers;
- Z-Image: ``noise_refiner``, ``context_refiner``, ``layers.N.attention``, ``feed_forward.w1``;
- Qwen-Image: ``img_mlp``/``txt_mlp``/``img_mod``/``txt_mod`` in diffusers' names;
- SD 3.5: ``attn2`` inside a ``transformer.`` block (medium's dual attention), kohya's ``joint_blocks``;
- FLUX.1: ``single_transformer_blocks.N.attn.to_q``/``proj_mlp`` (FLUX.2's single blocks have neither).

BFL's ``double_blocks``/``single_blocks`` names are FLUX.1's and FLUX.2's alike; their MLP widths tell
them apart: FLUX.1's MLP is 4x the width, FLUX.2's a SwiGLU of 3x, so ``single_blocks.N.linear2`` reads
5x the width (FLUX.1) or 4x (FLUX.2), ``linear1`` writes 7x or 9x, ``img_mlp.0`` writes 4x or 6x.

A LoRA touching only attention projections (``transformer_blocks.N.attn.to_q`` and the like, the
default of diffusers' training scripts) reads the same in SD 3.5, Qwen-Image, FLUX.1 and FLUX.2, often
at the same width (3072): its family is None and diffusers' loader decides when it loads; ``lora``
then refuses a LoRA with modules the model lacks (the loader itself only warns).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_FLUX2_NAMES = re.compile(r"to_qkv_mlp_proj|stream_modulation|ff(?:_context)?[._]linear_(?:in|out)")
_ZIMAGE_NAMES = re.compile(r"noise_refiner|context_refiner|(?:^|[._])layers[._]\d+[._]attention|feed_forward[._]w\d")
_QWEN_NAMES = re.compile(r"transformer_blocks[._]\d+[._](?:img_mlp|txt_mlp|img_mod|txt_mod)")
_SD3_NAMES = re.compile(r"^transformer\.transformer_blocks\.\d+\.attn2\.|^lora_unet_joint_blocks_|context_block")
_FLUX1_NAMES = re.compile(r"single_transformer_blocks[._]\d+[._](?:attn[._]to_[qkv]|proj_mlp)")
_BFL_BLOCKS = re.compile(r"(?:double_blocks|single_blocks)[._]\d+")
# BFL-layout layers whose width ratio tells FLUX.1 from FLUX.2: (pattern, side, FLUX.1 ratio, FLUX.2 ratio);
# side "in": the down matrix's input width over the up matrix's output; "out": the reverse.
_BFL_RATIOS = (
    (re.compile(r"single_blocks[._]\d+[._]linear2\.(?:lora_down|lora_A)\.weight$"), "in", 5, 4),
    (re.compile(r"single_blocks[._]\d+[._]linear1\.(?:lora_up|lora_B)\.weight$"), "out", 7, 9),
    (re.compile(r"double_blocks[._]\d+[._](?:img|txt)_mlp[._]0\.(?:lora_up|lora_B)\.weight$"), "out", 4, 6),
)


def transformer_lora_family(header: Mapping[str, Any]) -> str | None:
    """The family (``flux1``, ``flux2``, ``sd3``, ``zimage``, ``qwenimage``) the LoRA's keys show, or None
    when they show none (a UNet LoRA, or attention-only names several families share). ``header``:
    the safetensors header, key -> {"shape": [...]}."""
    keys = list(header)
    if any(_FLUX2_NAMES.search(k) for k in keys):
        return "flux2"
    if any(_ZIMAGE_NAMES.search(k) for k in keys):
        return "zimage"
    if any(_QWEN_NAMES.search(k) for k in keys):
        return "qwenimage"
    if any(_SD3_NAMES.search(k) for k in keys):
        return "sd3"
    if any(_FLUX1_NAMES.search(k) for k in keys):
        return "flux1"
    if any(_BFL_BLOCKS.search(k) for k in keys):
        return _bfl_family(header)
    return None


def _bfl_family(header: Mapping[str, Any]) -> str | None:
    for key, value in header.items():
        for pattern, side, flux1, flux2 in _BFL_RATIOS:
            if not pattern.search(key):
                continue
            ratio = _ratio(header, key, value, side)
            if ratio == flux1:
                return "flux1"
            if ratio == flux2:
                return "flux2"
    return None  # attention only: FLUX.1 and FLUX.2 alike


def _ratio(header: Mapping[str, Any], key: str, value: Any, side: str) -> float | None:
    """For a down matrix (side "in"): its input width over the layer's output width (the up matrix's);
    for an up matrix (side "out"): its output width over the layer's input width."""
    shape = value.get("shape", []) if isinstance(value, dict) else []
    if len(shape) != 2:
        return None
    if side == "in":
        other = header.get(_partner(key, "up"), {})
        other_shape = other.get("shape", []) if isinstance(other, dict) else []
        return shape[1] / other_shape[0] if len(other_shape) == 2 and other_shape[0] else None
    other = header.get(_partner(key, "down"), {})
    other_shape = other.get("shape", []) if isinstance(other, dict) else []
    return shape[0] / other_shape[1] if len(other_shape) == 2 and other_shape[1] else None


def _partner(key: str, want: str) -> str:
    pairs = {
        "up": (("lora_down", "lora_up"), ("lora_A", "lora_B")),
        "down": (("lora_up", "lora_down"), ("lora_B", "lora_A")),
    }[want]
    for old, new in pairs:
        if f".{old}." in key:
            return key.replace(f".{old}.", f".{new}.")
    return key

"""``--quantize none|fp8|int8|nf4``: the transformer and the large text encoder of a flow-matching model
loaded with quantised weights, through diffusers' and transformers' quantisation configs.

- ``int8``: torchao's int8 weight-only (``Int8WeightOnlyConfig``): Linear weights stored as int8 with a
  per-row scale, computed in the model's dtype. Runs on the CPU and on CUDA; about 0.28x of the fp32
  weight bytes, 0.55x of bf16.
- ``fp8``: torchao's float8 weights and dynamic float8 activations, per row
  (``Float8DynamicActivationFloat8WeightConfig``): CUDA with float8 tensor cores (Ada, Hopper).
- ``nf4``: bitsandbytes' 4-bit NormalFloat (``BitsAndBytesConfig``): CUDA.

What needs CUDA is refused at start (``Settings``: one line, exit 2), not at the first load. The UNet
families load unquantised (their UNet is 0.9-2.6 B parameters: a card that runs them needs none) and
the load says so in the log. A GGUF transformer file is already quantised: ``--quantize`` then
applies to its text encoder only.

Which text encoder counts as large: the one that is billions of parameters in the real model (T5-XXL
4.7 B in FLUX.1 and SD 3.5, Qwen2.5-VL 7 B in Qwen-Image, Qwen3 4 B in Z-Image). CLIP encoders and
the VAE stay in the model's dtype: small, and the VAE's convolutions are what the pixels depend on most.
"""

from __future__ import annotations

from typing import Any

import torch

DENOISER = "transformer"
LARGE_TEXT_ENCODERS = {"flux1": "text_encoder_2", "sd3": "text_encoder_3", "zimage": "text_encoder",
                       "qwenimage": "text_encoder"}


def denoiser_config(kind: str, dtype: torch.dtype) -> Any:
    """The diffusers quantisation config of the transformer for ``kind`` (None for ``none``)."""
    import diffusers

    if kind == "none":
        return None
    if kind == "nf4":
        return diffusers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype)
    return diffusers.TorchAoConfig(torchao_config(kind))


def text_encoder_config(kind: str, dtype: torch.dtype) -> Any:
    """The transformers quantisation config of a large text encoder for ``kind`` (None for ``none``)."""
    import transformers

    if kind == "none":
        return None
    if kind == "nf4":
        return transformers.BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                               bnb_4bit_compute_dtype=dtype)
    return transformers.TorchAoConfig(torchao_config(kind))


def pipeline_config(kind: str, family: str, dtype: torch.dtype, *, transformer: bool = True) -> Any:
    """diffusers' ``PipelineQuantizationConfig`` for a ``family`` pipeline's ``from_pretrained``: the
    transformer (unless ``transformer`` is False: it comes quantised or separately) and the large text
    encoder. None when nothing is quantised."""
    if kind == "none":
        return None
    from diffusers import PipelineQuantizationConfig

    mapping: dict[str, Any] = {}
    if transformer:
        mapping[DENOISER] = denoiser_config(kind, dtype)
    encoder = LARGE_TEXT_ENCODERS.get(family)
    if encoder is not None:
        mapping[encoder] = text_encoder_config(kind, dtype)
    return PipelineQuantizationConfig(quant_mapping=mapping) if mapping else None


def torchao_config(kind: str) -> Any:
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Int8WeightOnlyConfig, PerRow

    if kind == "int8":
        return Int8WeightOnlyConfig()
    if kind == "fp8":
        return Float8DynamicActivationFloat8WeightConfig(granularity=PerRow())
    raise ValueError(f"no torchao config for quantize {kind!r}")


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes the module's parameters take as stored: a torchao tensor counts its int8/float8 data and
    its scales, a GGUF parameter its packed blocks (``nbytes`` of a quantised tensor subclass would say
    what its dequantised form takes, or nothing)."""
    total = 0
    for tensor in module.parameters():
        parts = [getattr(tensor, name) for name in ("qdata", "scale") if isinstance(getattr(tensor, name, None),
                                                                                 torch.Tensor)]
        if parts:
            total += sum(part.numel() * part.element_size() for part in parts)
        else:
            total += tensor.numel() * tensor.element_size()
    return total

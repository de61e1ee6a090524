"""FLUX.1 in diffusers: ``FluxPipeline``, ``FluxImg2ImgPipeline``, ``FluxInpaintPipeline`` over one set
of modules, or ``FluxFillPipeline`` for a Fill transformer (image and mask latents beside the noise).

Loading: a diffusers folder (``model_index.json``), or a transformer-only single file completed from a
diffusers FLUX.1 folder (``--model-config`` or one of the library's): a file in diffusers' key names goes
through ``FluxTransformer2DModel.from_single_file``, one in BFL's layout through ``bfl_layout`` (diffusers'
mapping, with the width read from the file); the rest (VAE, CLIP, T5, tokenizers, scheduler) comes from
the folder. A file whose transformer takes 384 channels is a Fill model: ``FluxFillPipeline``.

Latents: the loop holds ``(B, h*w/4, 64)``, 16 channels packed in 2x2 patches; ``unpack`` gives
``(B, 16, h, w)``, the form previews decode. The VAE decodes ``latents / scaling + shift``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sdworker.engine.bfl_layout import is_bfl_layout, load_bfl_transformer
from sdworker.engine.families.flow import FlowAdapter, quantized
from sdworker.engine.models import LoadedModel, ModelSource
from sdworker.errors import ModelError


class Flux1Adapter(FlowAdapter):
    family = "flux1"
    label = "FLUX.1"
    pipelines = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")
    takes_negative_prompt = False  # guidance-distilled: no CFG pass (Forge and ComfyUI ignore it too)
    packed = True

    def load_base(self, source: ModelSource, dtype: torch.dtype, model_config: str | None, *,
                  transformer_only: bool, use_safetensors: bool, quantize: str = "none",
                  components: dict[str, Any] | None = None) -> Any:
        if source.kind == "folder":
            cls = _pipeline_class(source.location)
            return cls.from_pretrained(source.location, dtype=dtype, use_safetensors=use_safetensors,
                                       **quantized(quantize, self.family, dtype), **(components or {}))
        return super().load_base(source, dtype, model_config, transformer_only=transformer_only,
                                 use_safetensors=use_safetensors, quantize=quantize, components=components)

    def load_single_file(self, source: ModelSource, dtype: torch.dtype, model_config: str | None, *,
                         transformer_only: bool, quantize: str = "none",
                         components: dict[str, Any] | None = None) -> Any:
        """A transformer file (``.safetensors``, or ``.gguf``: already quantised, loaded through
        ``GGUFQuantizationConfig`` and dequantised block by block as it computes) completed from a
        diffusers FLUX.1 folder."""
        import diffusers

        from sdworker.engine.quantize import denoiser_config

        folder = self.config_folder(source, model_config)
        if not transformer_only:
            raise ModelError(f"model {source.location}: all-in-one FLUX.1 checkpoints are not supported yet; "
                             "use its transformer file with --model-config")
        gguf = source.location.lower().endswith(".gguf")
        config = diffusers.GGUFQuantizationConfig(compute_dtype=dtype) if gguf else denoiser_config(quantize, dtype)
        if not gguf and config is None and _file_is_bfl_layout(source.location):
            # diffusers' converter fixes the width at 3072: ours reads it from the file
            transformer = load_bfl_transformer(source.location, folder, dtype)
        else:
            transformer = diffusers.FluxTransformer2DModel.from_single_file(
                source.location, config=str(folder), subfolder="transformer", dtype=dtype,
                **({} if config is None else {"quantization_config": config}),
            )
        cls = diffusers.FluxFillPipeline if transformer.config.in_channels == 384 else diffusers.FluxPipeline
        return cls.from_pretrained(str(folder), transformer=transformer, dtype=dtype,
                                   **quantized(quantize, self.family, dtype, transformer=False), **(components or {}))

    def build(self, base: Any, device: torch.device, dtype: torch.dtype, source: ModelSource) -> LoadedModel:
        """A Fill model inpaints only and an edit model (Kontext) runs only edits (``engine.edit``, through
        ``base_pipe``): their other pipelines are None, and the engine refuses those jobs with a 4xx naming
        the model and the operation."""
        import diffusers

        if isinstance(base, diffusers.FluxFillPipeline | diffusers.FluxKontextPipeline):
            base.set_progress_bar_config(disable=True)  # type: ignore[union-attr]
            inpaint = base if isinstance(base, diffusers.FluxFillPipeline) else None
            return LoadedModel(None, None, inpaint, family=self.family, device=device, dtype=dtype, source=source,
                               base_pipe=base)
        return super().build(base, device, dtype, source)

    def missing_reason(self, model: LoadedModel) -> str:
        if model.inpaint is not None:
            return ": it is a FLUX.1 Fill model, which only inpaints"
        return ": it is an edit model (FLUX.1 Kontext); it runs image_edit jobs"

    def unpack(self, latents: torch.Tensor, width: int, height: int, vae_scale_factor: int = 8) -> torch.Tensor:
        """``(B, h*w/4, 64)`` -> ``(B, 16, h, w)`` by diffusers' own ``FluxPipeline._unpack_latents``."""
        from diffusers import FluxPipeline

        if latents.ndim == 4:
            return latents
        unpacked: torch.Tensor = FluxPipeline._unpack_latents(latents, height, width, vae_scale_factor)
        return unpacked


def _file_is_bfl_layout(path: str) -> bool:
    from safetensors import safe_open

    with safe_open(path, framework="pt") as handle:
        return is_bfl_layout(handle.keys())


def _pipeline_class(folder: str) -> Any:
    import diffusers

    index = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))
    transformer = json.loads((Path(folder) / "transformer" / "config.json").read_text(encoding="utf-8"))
    if transformer.get("in_channels") == 384:
        return diffusers.FluxFillPipeline
    return diffusers.FluxKontextPipeline if "Kontext" in str(index.get("_class_name", "")) else diffusers.FluxPipeline


ADAPTER = Flux1Adapter()

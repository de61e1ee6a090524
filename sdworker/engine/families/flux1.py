"""FLUX.1 in diffusers: ``FluxPipeline``, ``FluxImg2ImgPipeline``, ``FluxInpaintPipeline`` over one set
of modules, or ``FluxFillPipeline`` for a Fill transformer (image and mask latents beside the noise).

Loading: a diffusers folder (``model_index.json``), or a transformer-only single file completed from a
diffusers FLUX.1 folder (``--model-config`` or one of the library's): the file's transformer goes
through diffusers' ``FluxTransformer2DModel.from_single_file`` (which converts BFL's layout), the
rest (VAE, CLIP, T5, tokenizers, scheduler) comes from the folder.

Latents: the loop holds ``(B, h*w/4, 64)``, 16 channels packed in 2x2 patches; ``unpack`` gives
``(B, 16, h, w)``, the form previews decode. The VAE decodes ``latents / scaling + shift``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from sdworker.engine.families.flow import FlowAdapter
from sdworker.engine.models import LoadedModel, ModelSource
from sdworker.errors import ModelError


class Flux1Adapter(FlowAdapter):
    family = "flux1"
    label = "FLUX.1"
    pipelines = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")
    takes_negative_prompt = False  # guidance-distilled: no CFG pass (Forge and ComfyUI ignore it too)
    packed = True

    def load_base(self, source: ModelSource, dtype: torch.dtype, model_config: str | None, *,
                  transformer_only: bool, use_safetensors: bool, components: dict[str, Any] | None = None) -> Any:
        if source.kind == "folder":
            cls = _pipeline_class(source.location)
            return cls.from_pretrained(source.location, dtype=dtype, use_safetensors=use_safetensors,
                                       **(components or {}))
        return super().load_base(source, dtype, model_config, transformer_only=transformer_only,
                                 use_safetensors=use_safetensors, components=components)

    def load_single_file(self, source: ModelSource, dtype: torch.dtype, model_config: str | None, *,
                         transformer_only: bool, components: dict[str, Any] | None = None) -> Any:
        import diffusers

        folder = self.config_folder(source, model_config)
        if not transformer_only:
            raise ModelError(f"model {source.location}: all-in-one FLUX.1 checkpoints are not supported yet; "
                             "use its transformer file with --model-config")
        transformer = diffusers.FluxTransformer2DModel.from_single_file(
            source.location, config=str(folder), subfolder="transformer", dtype=dtype
        )
        cls = diffusers.FluxFillPipeline if transformer.config.in_channels == 384 else diffusers.FluxPipeline
        return cls.from_pretrained(str(folder), transformer=transformer, dtype=dtype, **(components or {}))

    def build(self, base: Any, device: torch.device, dtype: torch.dtype, source: ModelSource) -> LoadedModel:
        """A Fill model inpaints only and an edit model (Kontext) runs nothing yet: their other pipelines
        are None, and the engine refuses those jobs with a 4xx naming the model and the operation."""
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
        return ": it is an edit model (FLUX.1 Kontext); running edit models is not supported yet"

    def unpack(self, latents: torch.Tensor, width: int, height: int, vae_scale_factor: int = 8) -> torch.Tensor:
        """``(B, h*w/4, 64)`` -> ``(B, 16, h, w)`` by diffusers' own ``FluxPipeline._unpack_latents``."""
        from diffusers import FluxPipeline

        if latents.ndim == 4:
            return latents
        unpacked: torch.Tensor = FluxPipeline._unpack_latents(latents, height, width, vae_scale_factor)
        return unpacked


def _pipeline_class(folder: str) -> Any:
    import diffusers

    index = json.loads((Path(folder) / "model_index.json").read_text(encoding="utf-8"))
    transformer = json.loads((Path(folder) / "transformer" / "config.json").read_text(encoding="utf-8"))
    if transformer.get("in_channels") == 384:
        return diffusers.FluxFillPipeline
    return diffusers.FluxKontextPipeline if "Kontext" in str(index.get("_class_name", "")) else diffusers.FluxPipeline


ADAPTER = Flux1Adapter()

"""Qwen-Image in diffusers: ``QwenImagePipeline`` and its img2img and inpaint pipelines over one set
of modules; an edit model (``QwenImageEditPipeline``, ``QwenImageEditPlusPipeline``) loads as its own
pipeline and runs only ``image_edit`` jobs (``engine.edit``). Where torchvision is missing its
``processor`` is built by ``engine.qwen_processor`` and passed in as a component.

Latents: the loop holds ``(B, h*w/4, 64)`` normalised Wan-VAE latents in 2x2 patches; ``unpack`` gives
``(B, 16, h, w)``. The VAE is a video VAE: it decodes ``(B, 16, frames, h, w)`` after
``z * std + mean``, so previews with the full VAE denormalise first
(``previews.vae.DenormalisingVaeDecoder``), not the SD one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sdworker.domain.request import GenerationRequest
from sdworker.engine.families.flow import FlowAdapter, quantized
from sdworker.engine.models import LoadedModel, ModelSource
from sdworker.engine.qwen_processor import load_qwen2vl_processor, torchvision_missing
from sdworker.previews.vae import DenormalisingVaeDecoder


class QwenImageAdapter(FlowAdapter):
    family = "qwenimage"
    label = "Qwen-Image"
    pipelines = ("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline")
    guidance_argument = "true_cfg_scale"
    packed = True

    def load_base(self, source: ModelSource, dtype: torch.dtype, model_config: str | None, *,
                  transformer_only: bool, use_safetensors: bool, quantize: str = "none",
                  components: dict[str, Any] | None = None) -> Any:
        import diffusers

        if source.kind == "folder":
            index = json.loads((Path(source.location) / "model_index.json").read_text(encoding="utf-8"))
            if "Edit" in str(index.get("_class_name", "")):
                cls = getattr(diffusers, str(index["_class_name"]))
                components = dict(components or {})
                processor = Path(source.location) / "processor"
                if "processor" not in components and processor.is_dir() and torchvision_missing():
                    components["processor"] = load_qwen2vl_processor(processor)
                return cls.from_pretrained(source.location, dtype=dtype, use_safetensors=use_safetensors,
                                           **quantized(quantize, self.family, dtype), **(components or {}))
        return super().load_base(source, dtype, model_config, transformer_only=transformer_only,
                                 use_safetensors=use_safetensors, quantize=quantize, components=components)

    def build(self, base: Any, device: torch.device, dtype: torch.dtype, source: ModelSource) -> LoadedModel:
        if "Edit" in type(base).__name__:
            base.set_progress_bar_config(disable=True)
            return LoadedModel(None, None, None, family=self.family, device=device, dtype=dtype, source=source,
                               base_pipe=base)
        return super().build(base, device, dtype, source)

    def missing_reason(self, model: LoadedModel) -> str:
        return ": it is an edit model (Qwen-Image-Edit); it runs image_edit jobs"

    def call_arguments(
        self,
        model: LoadedModel,
        request: GenerationRequest,
        prompt: str,
        generators: list[torch.Generator],
        init: Image.Image | None = None,
        mask: Image.Image | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        pipe, kwargs = super().call_arguments(model, request, prompt, generators, init, mask)
        if (request.guidance_scale or 0) > 1 and "negative_prompt" not in kwargs:
            kwargs["negative_prompt"] = " "  # the model card's empty negative: CFG still runs
        return pipe, kwargs

    def unpack(self, latents: torch.Tensor, width: int, height: int, vae_scale_factor: int = 8) -> torch.Tensor:
        from diffusers import QwenImagePipeline

        if latents.ndim == 4:
            return latents
        unpacked: torch.Tensor = QwenImagePipeline._unpack_latents(latents, height, width, vae_scale_factor)
        return unpacked[:, :, 0]

    def decode(self, pipe: Any, latents: torch.Tensor, width: int, height: int) -> list[Image.Image]:
        with torch.no_grad():
            frames = denormalise(pipe.vae, self.unpack(latents, width, height, pipe.vae_scale_factor))
            pixels = pipe.vae.decode(frames, return_dict=False)[0][:, :, 0]
        images: list[Image.Image] = pipe.image_processor.postprocess(pixels, output_type="pil")
        return images

    def preview_decoders(self, vae: Any) -> dict[str, Any]:
        return {"vae": DenormalisingVaeDecoder(vae, denormalise)}


def denormalise(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """``(B, 16, h, w)`` normalised latents -> ``(B, 16, 1, h, w)`` VAE latents, as the pipeline does."""
    z_dim = vae.config.z_dim
    mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(latents.device, vae.dtype)
    std = torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(latents.device, vae.dtype)
    return latents.unsqueeze(2).to(vae.dtype) * std + mean


ADAPTER = QwenImageAdapter()

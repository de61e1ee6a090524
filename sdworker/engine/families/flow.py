"""What every flow-matching family's adapter does the same way; a family's module says only how it
differs (pipeline classes, packed latents, how guidance is passed, single-file loading).

A family with classifier-free guidance (SD 3.5, Z-Image) passes ``negative_prompt`` and
``guidance_scale``; a guidance-distilled one (FLUX.1) passes ``guidance_scale`` to the transformer and
ignores the negative prompt; Qwen-Image's CFG is ``true_cfg_scale``. Every call goes to diffusers' own
pipeline with the job's arguments, so the pixels equal that pipeline's called directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sdworker.domain.prompt_length import plain_prompt
from sdworker.domain.request import GenerationRequest, Operation
from sdworker.engine.models import LoadedModel, ModelSource, share_modules
from sdworker.errors import InvalidRequest, ModelError


class FlowAdapter:
    family = ""
    label = ""
    pipelines: tuple[str, str | None, str | None] = ("", None, None)  # text-to-image, image-to-image, inpaint
    takes_negative_prompt = True
    guidance_argument = "guidance_scale"  # Qwen-Image: true_cfg_scale
    packed = False  # the loop holds (B, seq, C*4) patch sequences (FLUX)

    # -- loading ------------------------------------------------------------------------------------

    def load_base(self, source: ModelSource, dtype: torch.dtype, model_config: str | None, *,
                  transformer_only: bool, use_safetensors: bool, quantize: str = "none",
                  components: dict[str, Any] | None = None) -> Any:
        """The family's base pipeline; ``quantize`` (``engine.quantize``) goes to diffusers as the
        pipeline's quantisation config. ``components``: modules already loaded for another model (shared
        text encoders, VAE), passed to diffusers instead of loading those parts again."""
        import diffusers

        if source.kind in ("folder", "hub"):
            cls = getattr(diffusers, self.pipelines[0])
            return cls.from_pretrained(source.location, dtype=dtype, use_safetensors=use_safetensors,
                                       **quantized(quantize, self.family, dtype), **(components or {}))
        return self.load_single_file(source, dtype, model_config, transformer_only=transformer_only,
                                     quantize=quantize, components=components)

    def load_single_file(self, source: ModelSource, dtype: torch.dtype, model_config: str | None, *,
                         transformer_only: bool, quantize: str = "none",
                         components: dict[str, Any] | None = None) -> Any:
        raise ModelError(f"model {source.location}: single-file {self.label} checkpoints are not supported yet; "
                         "use a diffusers folder")

    def config_folder(self, source: ModelSource, model_config: str | None) -> Path:
        if not model_config:
            raise ModelError(
                f"model {source.location}: a {self.label} transformer file needs the rest of the model (VAE, text "
                f"encoders, tokenizers): pass --model-config DIR, a diffusers {self.label} folder, or put one in "
                "--models-dir"
            )
        folder = Path(model_config).expanduser()
        if not (folder / "model_index.json").is_file():
            raise ModelError(f"--model-config {model_config}: not a diffusers folder (no model_index.json)")
        return folder

    def build(self, base: Any, device: torch.device, dtype: torch.dtype, source: ModelSource) -> LoadedModel:
        """The family's pipelines over ``base``'s very modules (no second load)."""
        import diffusers

        others = [share_modules(getattr(diffusers, name), base) if name else None for name in self.pipelines[1:]]
        pipes = [base, *others]
        for pipe in pipes:
            if pipe is not None:
                pipe.set_progress_bar_config(disable=True)
        return LoadedModel(pipes[0], pipes[1], pipes[2], family=self.family, device=device, dtype=dtype,
                           source=source)

    # -- one job ------------------------------------------------------------------------------------

    def plain_prompt(self, prompt: str) -> tuple[str, bool]:
        """The text the encoders get (``domain.prompt_length.plain_prompt``)."""
        return plain_prompt(prompt)

    def call_arguments(
        self,
        model: LoadedModel,
        request: GenerationRequest,
        prompt: str,
        generators: list[torch.Generator],
        init: Image.Image | None = None,
        mask: Image.Image | None = None,
    ) -> tuple[Any, dict[str, Any]]:
        """The pipeline for ``request.operation`` and its keyword arguments, as one would call diffusers.
        ``request``'s size is settled; ``init``/``mask`` are its decoded images."""
        kwargs: dict[str, Any] = {
            "prompt": prompt,
            "num_inference_steps": request.num_inference_steps,
            self.guidance_argument: request.guidance_scale,
            "num_images_per_prompt": request.num_images,
            "generator": generators[0] if len(generators) == 1 else generators,
            "width": request.width,
            "height": request.height,
        }
        if self.takes_negative_prompt and request.negative_prompt:
            kwargs["negative_prompt"] = request.negative_prompt
        pipe = {Operation.TEXT_TO_IMAGE: model.text_to_image, Operation.IMAGE_TO_IMAGE: model.image_to_image,
                Operation.INPAINT: model.inpaint}[request.operation]
        if pipe is None:
            raise InvalidRequest(
                f"operation: model {request.model or 'default'!r} ({self.label}) cannot run "
                f"{request.operation.value}{self.missing_reason(model)}",
                field="operation",
            )
        if request.operation is Operation.TEXT_TO_IMAGE:
            return pipe, kwargs
        assert init is not None and request.width is not None and request.height is not None
        size = (request.width, request.height)
        kwargs["image"] = _resize(init.convert("RGB"), size, Image.Resampling.LANCZOS)
        kwargs["strength"] = request.strength
        if request.operation is Operation.IMAGE_TO_IMAGE:
            return pipe, kwargs
        assert mask is not None
        kwargs["mask_image"] = _resize(mask.convert("L"), size, Image.Resampling.BILINEAR)
        return pipe, kwargs

    def missing_reason(self, model: LoadedModel) -> str:
        return ""

    # -- latents ------------------------------------------------------------------------------------

    def unpack(self, latents: torch.Tensor, width: int, height: int, vae_scale_factor: int = 8) -> torch.Tensor:
        """The loop's latents as ``(B, C, h, w)`` for previews."""
        return latents

    def preview_decoders(self, vae: Any) -> dict[str, Any]:
        """Preview decoders of the family's own that replace the generic ones (method -> decoder)."""
        return {}

    def decode(self, pipe: Any, latents: torch.Tensor, width: int, height: int) -> list[Image.Image]:
        """What the pipeline does after its loop (for an interrupted job): unscale, shift, VAE, postprocess."""
        vae = pipe.vae
        with torch.no_grad():
            unpacked = self.unpack(latents, width, height, int(getattr(pipe, "vae_scale_factor", 8)))
            unpacked = unpacked / vae.config.scaling_factor + (vae.config.get("shift_factor") or 0.0)
            pixels = vae.decode(unpacked.to(vae.dtype), return_dict=False)[0]
        images: list[Image.Image] = pipe.image_processor.postprocess(pixels, output_type="pil")
        return images


def quantized(kind: str, family: str, dtype: torch.dtype, *, transformer: bool = True) -> dict[str, Any]:
    """``from_pretrained``'s ``quantization_config`` argument for ``--quantize kind`` (none: nothing)."""
    from sdworker.engine.quantize import pipeline_config

    config = pipeline_config(kind, family, dtype, transformer=transformer)
    return {} if config is None else {"quantization_config": config}


def _resize(image: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    return image if image.size == size else image.resize(size, resample)

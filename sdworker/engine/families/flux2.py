"""FLUX.2 in diffusers: ``Flux2Pipeline`` (dev) or ``Flux2KleinPipeline`` (klein) for text-to-image,
``Flux2KleinInpaintPipeline`` over the klein's modules for inpainting. diffusers has no image-to-image
pipeline for FLUX.2, and none for dev's inpainting: those jobs are a 4xx naming the model.

Loading: a diffusers folder, or a transformer-only single file (BFL's layout or diffusers' names)
completed from a diffusers FLUX.2 folder of the same kind (``--model-config`` or one of the library's).

Latents: the loop holds ``(B, h/16 * w/16, 128)``, a token per 2x2 patch of the 32-channel VAE latents,
normalised by the VAE's batch norm (``vae.bn`` running mean and variance). ``unpack`` gives the
un-patchified ``(B, 32, h/8, w/8)``, still normalised: the form ComfyUI's latent2rgb set expects.
The VAE decodes after patchify, ``z * sqrt(var + eps) + mean``, un-patchify, as the pipeline ends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from sdworker.engine.families.flow import FlowAdapter, quantized
from sdworker.engine.models import LoadedModel, ModelSource
from sdworker.errors import ModelError
from sdworker.previews.vae import DenormalisingVaeDecoder


class Flux2Adapter(FlowAdapter):
    family = "flux2"
    label = "FLUX.2"
    pipelines = ("Flux2KleinPipeline", None, "Flux2KleinInpaintPipeline")
    takes_negative_prompt = False  # no pipeline of FLUX.2 takes one (klein base's CFG runs against "")
    packed = True

    def load_base(self, source: ModelSource, dtype: torch.dtype, model_config: str | None, *,
                  transformer_only: bool, use_safetensors: bool, quantize: str = "none",
                  components: dict[str, Any] | None = None) -> Any:
        import diffusers

        if source.kind == "folder":
            index = json.loads((Path(source.location) / "model_index.json").read_text(encoding="utf-8"))
            name = "Flux2KleinPipeline" if "Klein" in str(index.get("_class_name", "")) else "Flux2Pipeline"
            return getattr(diffusers, name).from_pretrained(source.location, dtype=dtype,
                                                            use_safetensors=use_safetensors,
                                                            **quantized(quantize, self.family, dtype),
                                                            **(components or {}))
        return super().load_base(source, dtype, model_config, transformer_only=transformer_only,
                                 use_safetensors=use_safetensors, quantize=quantize, components=components)

    def load_single_file(self, source: ModelSource, dtype: torch.dtype, model_config: str | None, *,
                         transformer_only: bool, quantize: str = "none",
                         components: dict[str, Any] | None = None) -> Any:
        """A transformer file (BFL's layout, as ``flux-2-klein-4b.safetensors`` is published, optionally under
        ``model.diffusion_model.`` as ComfyUI repackages it; or diffusers' key names) through
        ``Flux2Transformer2DModel.from_single_file`` (diffusers' own key mapping), completed from a
        diffusers FLUX.2 folder of the same kind (klein or dev), whose transformer config it must fit."""
        import diffusers
        from safetensors.torch import load_file

        from sdworker.engine.quantize import denoiser_config

        folder = self.config_folder(source, model_config)
        if not transformer_only:
            raise ModelError(f"model {source.location}: all-in-one FLUX.2 checkpoints are not supported; "
                             "use its transformer file with --model-config")
        # diffusers' FLUX.2 converter reads bare BFL names (its block index is the key's second part)
        state = {k.removeprefix("model.diffusion_model."): v for k, v in load_file(source.location).items()}
        config = denoiser_config(quantize, dtype)
        try:
            transformer = diffusers.Flux2Transformer2DModel.from_single_file(
                state, config=str(folder), subfolder="transformer", dtype=dtype,
                **({} if config is None else {"quantization_config": config}),
            )
        except (ValueError, KeyError, RuntimeError) as exc:  # a file of another size than the folder's
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"model {source.location}: the transformer file does not fit the FLUX.2 folder "
                             f"{folder} that completes it: {reason}") from exc
        index = json.loads((folder / "model_index.json").read_text(encoding="utf-8"))
        name = "Flux2KleinPipeline" if "Klein" in str(index.get("_class_name", "")) else "Flux2Pipeline"
        return getattr(diffusers, name).from_pretrained(str(folder), transformer=transformer, dtype=dtype,
                                                        **quantized(quantize, self.family, dtype, transformer=False),
                                                        **(components or {}))

    def build(self, base: Any, device: torch.device, dtype: torch.dtype, source: ModelSource) -> LoadedModel:
        """dev has its text-to-image pipeline only (diffusers has no FLUX.2 dev inpaint pipeline)."""
        if type(base).__name__ == "Flux2Pipeline":
            base.set_progress_bar_config(disable=True)
            return LoadedModel(base, None, None, family=self.family, device=device, dtype=dtype, source=source)
        return super().build(base, device, dtype, source)

    def missing_reason(self, model: LoadedModel) -> str:
        if model.inpaint is None:
            return ": diffusers has only a text-to-image pipeline for FLUX.2 dev"
        return ": diffusers has no image-to-image pipeline for FLUX.2 (inpaint with a full mask instead)"

    def unpack(self, latents: torch.Tensor, width: int, height: int, vae_scale_factor: int = 8) -> torch.Tensor:
        """``(B, h/16 * w/16, 128)`` -> ``(B, 32, h/8, w/8)``: tokens in row order (the pipeline's latent
        ids), then diffusers' own ``_unpatchify_latents``."""
        from diffusers import Flux2KleinPipeline

        if latents.ndim == 4:
            return latents
        rows, columns = height // (vae_scale_factor * 2), width // (vae_scale_factor * 2)
        grid = latents.reshape(latents.shape[0], rows, columns, latents.shape[-1]).permute(0, 3, 1, 2)
        unpatched: torch.Tensor = Flux2KleinPipeline._unpatchify_latents(grid)
        return unpatched

    def decode(self, pipe: Any, latents: torch.Tensor, width: int, height: int) -> list[Image.Image]:
        with torch.no_grad():
            z = denormalise(pipe.vae, self.unpack(latents, width, height, int(pipe.vae_scale_factor)))
            pixels = pipe.vae.decode(z, return_dict=False)[0]
        images: list[Image.Image] = pipe.image_processor.postprocess(pixels, output_type="pil")
        return images

    def preview_decoders(self, vae: Any) -> dict[str, Any]:
        return {"vae": DenormalisingVaeDecoder(vae, denormalise)}


def denormalise(vae: Any, latents: torch.Tensor) -> torch.Tensor:
    """``(B, 32, h, w)`` batch-norm normalised latents -> the VAE's own, as the pipeline does (the batch
    norm runs over the 128 patchified channels)."""
    from diffusers import Flux2KleinPipeline

    patched = Flux2KleinPipeline._patchify_latents(latents.to(vae.dtype))
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(patched.device, patched.dtype)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(patched.device,
                                                                                            patched.dtype)
    result: torch.Tensor = Flux2KleinPipeline._unpatchify_latents(patched * std + mean)
    return result


ADAPTER = Flux2Adapter()

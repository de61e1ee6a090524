"""The shared loop's hooks for the UNet families, SD 1.x, 2.x and SDXL (``batch``).

Per job, what ``StableDiffusion(XL)Pipeline.__call__`` makes before its loop: its text embeddings (from
the prompt, or from the A1111-style encoder's output, as ``generate`` hands them to the pipeline), its
initial noise (``randn_tensor`` from its generators, times ``init_noise_sigma``), its own scheduler
with ``eta``/``generator`` where its ``step`` takes them, SDXL's size conditioning.

The UNet call's rows are ``[uncond of every job..., cond of every job...]``, the pipeline's
``[uncond; cond]`` layout widened to several jobs, so ``chunk(2)`` still splits the prediction into the
two halves and each job reads its rows at the same offset in both. Jobs share a call only when their
prompts encode to one length (a long or weighted prompt encoded A1111's way is 77 x chunks tokens): the
job's ``group``. A job with ``guidance_scale`` <= 1 runs no CFG pass (one row per image), a layout this
call does not build: it runs alone.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from sdworker.engine.batch import BatchJob
from sdworker.engine.decoding import decode_like_pipeline, decode_like_xl_pipeline
from sdworker.engine.protocol import BatchItem
from sdworker.engine.step_hook import StepCallback
from sdworker.engine.x0 import X0Recorder

if TYPE_CHECKING:
    from sdworker.domain.request import GenerationRequest
    from sdworker.engine.slots import ModelSlot


class UNetBatch:
    def refusal(self, slot: ModelSlot) -> str | None:
        """Models whose UNet takes guidance as an embedding (LCM: ``time_cond_proj_dim``) run no
        classifier-free guidance in the pipeline: a different row layout."""
        if slot.model.text_to_image.unet.config.get("time_cond_proj_dim") is not None:
            return "the UNet takes guidance as an embedding (LCM): no CFG rows"
        return None

    def runs_alone(self, slot: ModelSlot, request: GenerationRequest) -> bool:
        return not (request.guidance_scale or 0) > 1

    def prepare(self, slot: ModelSlot, position: int, item: BatchItem, prompt: str, seed: int,
                started: float) -> BatchJob:
        request = item.request
        assert request.width is not None and request.height is not None and request.num_inference_steps is not None
        pipe = slot.model.text_to_image
        device = pipe._execution_device
        seeds = tuple(seed + i for i in range(request.num_images))
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        generator: Any = generators[0] if len(generators) == 1 else generators  # as generate passes it
        positive, negative, pooled = _encode(slot, request, prompt, device)
        scheduler, scheduler_name = slot.schedulers.create(request.scheduler)
        scheduler.set_timesteps(request.num_inference_steps, device=device)  # retrieve_timesteps, then latents
        shape = (request.num_images, pipe.unet.config.in_channels, request.height // pipe.vae_scale_factor,
                 request.width // pipe.vae_scale_factor)
        latents = randn_tensor(shape, generator=generator, device=device, dtype=positive.dtype)
        latents = latents * scheduler.init_noise_sigma
        inputs: dict[str, Any] = {"cond": positive, "uncond": negative, "guidance": float(request.guidance_scale or 0)}
        if pooled is not None:  # SDXL: original and target size = the output size, no crop (the defaults)
            projection = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else None
            size = (request.height, request.width)
            time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=positive.dtype,
                                              text_encoder_projection_dim=projection or int(pooled[1].shape[-1]))
            inputs.update(pooled=pooled, time_ids=time_ids.to(device))
            if hasattr(scheduler, "set_begin_index"):  # the SDXL pipeline does, just before its loop
                scheduler.set_begin_index(0)
        recorder = X0Recorder(scheduler)  # wraps step; its signature stays visible to the check below
        accepts = set(inspect.signature(scheduler.step).parameters)
        step_kwargs: dict[str, Any] = {}
        if "eta" in accepts:
            step_kwargs["eta"] = 0.0  # the pipeline's default
        if "generator" in accepts:
            step_kwargs["generator"] = generator
        return BatchJob(request=request, seeds=seeds, scheduler=scheduler, scheduler_name=scheduler_name,
                        latents=latents, inputs=inputs,
                        callback=StepCallback(item.on_step, item.cancel, recorder, slot.render_preview),
                        recorder=recorder, position=position, started=started, group=int(positive.shape[1]),
                        step_kwargs=step_kwargs)

    def predict(self, pipe: Any, jobs: list[BatchJob], index: int, t: torch.Tensor) -> list[torch.Tensor]:
        scaled = [job.scheduler.scale_model_input(job.latents, job.scheduler.timesteps[index]) for job in jobs]
        embeddings, added_cond_kwargs = _conditioning(jobs)
        noise_pred = pipe.unet(torch.cat(scaled + scaled), t, encoder_hidden_states=embeddings, timestep_cond=None,
                               cross_attention_kwargs=None, added_cond_kwargs=added_cond_kwargs, return_dict=False)[0]
        uncond_rows, cond_rows = noise_pred.chunk(2)
        guided: list[torch.Tensor] = []
        row = 0
        for job in jobs:
            uncond, cond = uncond_rows[row : row + job.rows], cond_rows[row : row + job.rows]
            row += job.rows
            guided.append(uncond + job.inputs["guidance"] * (cond - uncond))
        return guided

    def decode(self, pipe: Any, job: BatchJob, latents: torch.Tensor) -> list[Image.Image]:
        decode = decode_like_xl_pipeline if "pooled" in job.inputs else decode_like_pipeline
        images: list[Image.Image] = decode(pipe, latents)
        return images


def _encode(
    slot: ModelSlot, request: GenerationRequest, prompt: str, device: Any
) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, torch.Tensor] | None]:
    """The pipeline's ``encode_prompt`` with what ``generate`` passes the pipeline: the texts, or the
    A1111-style encoder's embeddings in their place. (positive, negative, SDXL's pooled pair)."""
    pipe = slot.model.text_to_image
    texts: tuple[str | None, str | None] = (prompt, request.negative_prompt or None)
    given: dict[str, Any] = {}
    if slot.prompts.needs_custom(prompt, request.negative_prompt, request.clip_skip):
        given = slot.prompts.encode(prompt, request.negative_prompt, request.clip_skip, slot.model.device)
        texts = (None, None)
    with torch.no_grad():
        if slot.model.family == "sdxl":
            positive, negative, pooled, negative_pooled = pipe.encode_prompt(
                texts[0], None, device, request.num_images, True, texts[1], **given
            )
            return positive, negative, (negative_pooled, pooled)
        positive, negative = pipe.encode_prompt(texts[0], device, request.num_images, True, texts[1], **given)
    return positive, negative, None


def _conditioning(jobs: list[BatchJob]) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """The UNet's text conditioning for these jobs' rows, ``[uncond of every job..., cond of every
    job...]``: the pipeline's ``cat([negative, positive])`` (SDXL: its pooled embeddings the same way,
    and its size conditioning, one row per UNet row: all equal, as the group has one size)."""
    embeddings = torch.cat([job.inputs["uncond"] for job in jobs] + [job.inputs["cond"] for job in jobs])
    if "pooled" not in jobs[0].inputs:
        return embeddings, None
    pooled = [job.inputs["pooled"] for job in jobs]
    time_ids = [job.inputs["time_ids"].repeat(job.rows, 1) for job in jobs]
    text_embeds = torch.cat([negative for negative, _ in pooled] + [positive for _, positive in pooled])
    return embeddings, {"text_embeds": text_embeds, "time_ids": torch.cat(time_ids + time_ids)}

"""The shared loop's hooks for the flow-matching families (``batch``): what each family's pipeline does
before its loop, how its transformer call takes several jobs' rows, and how a job's prediction is
guided. Each hook follows the family's diffusers pipeline line by line, for one job, so a batched job's
pixels equal its solo run (the engine tests hold each within 40 dB PSNR, most equal).

What differs by family, and how the rows of one call are laid out (``rows`` per job, in job order):

- FLUX.1 (dev, schnell): one row per image, no CFG pass; dev's distilled guidance is a per-row input
  of the transformer, so jobs of different guidance share a call; schnell takes none. The T5 text is
  padded to 512 tokens and the position ids are the same for every row: a plain concatenation.
- SD 3.5: true CFG, ``[uncond; cond]`` rows per job when its ``guidance_scale`` > 1 (a job without CFG
  has only its cond rows, in the same call); CLIP + T5 text of fixed length (77 + 256).
- Z-Image: the transformer takes lists (one latent and one caption per row, of any length: it pads
  them itself); CFG rows when ``guidance_scale`` > 0, guided as ``pos + g * (pos - neg)`` and negated,
  as the pipeline does.
- Qwen-Image: true CFG (``true_cfg_scale``) with the pipeline's norm rescale; the Qwen2.5-VL text has
  each prompt's own length, so the rows are padded to the longest and the padding masked out
  (``encoder_hidden_states_mask``, which the transformer builds its joint attention mask from).
- FLUX.2: one row per image (distilled klein; dev, whose distilled guidance is a per-row input as
  FLUX.1 dev's), or cond and uncond rows (klein base, CFG against the empty prompt, as the pipeline
  does); text (padded to 512 tokens) and position ids are per row.

Which models cannot batch, and why, is each family's ``BatchHooks.refusal`` (and its facts module).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from sdworker.domain.families import family_facts
from sdworker.engine.batch import BatchJob
from sdworker.engine.families import flow_adapter, ignored_field_warnings, unpacking_renderer
from sdworker.engine.families.flow import FlowAdapter
from sdworker.engine.protocol import BatchItem
from sdworker.engine.step_hook import StepCallback
from sdworker.engine.x0 import X0Recorder

if TYPE_CHECKING:
    from sdworker.domain.request import GenerationRequest
    from sdworker.engine.slots import ModelSlot


class FlowBatch:
    """The part every flow family prepares alike; a subclass says how its pipeline encodes, draws its
    latents, sets its timesteps and calls its transformer."""

    family = ""
    pipeline = ""  # the text-to-image pipeline class that can batch

    @property
    def adapter(self) -> FlowAdapter:
        adapter = flow_adapter(self.family)
        assert adapter is not None
        return adapter

    def refusal(self, slot: ModelSlot) -> str | None:
        pipe = slot.model.text_to_image
        if pipe is None or type(pipe).__name__ != self.pipeline:
            return f"only {self.pipeline} models batch"
        return None

    def runs_alone(self, slot: ModelSlot, request: GenerationRequest) -> bool:
        return False  # each job brings its own rows: jobs with and without CFG share a call

    def prepare(self, slot: ModelSlot, position: int, item: BatchItem, prompt: str, seed: int,
                started: float) -> BatchJob:
        request = item.request
        assert request.width is not None and request.height is not None and request.num_inference_steps is not None
        pipe = slot.model.text_to_image
        adapter = self.adapter
        facts = family_facts(self.family)
        text, syntax_removed = adapter.plain_prompt(prompt)
        warnings = ignored_field_warnings(request, facts, slot.entry.variant, syntax_removed=syntax_removed)
        seeds = tuple(seed + i for i in range(request.num_images))
        generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        # The very arguments generate would call the pipeline with (the prompt, negative and guidance).
        _, kwargs = adapter.call_arguments(slot.model, request, text, generators)
        scheduler, _ = slot.schedulers.create(None)
        inputs, latents = self.before_loop(pipe, request, kwargs, scheduler)
        recorder = X0Recorder(scheduler)
        renderer = unpacking_renderer(slot.render_preview, adapter, request, pipe)
        return BatchJob(request=request, seeds=seeds, scheduler=scheduler, scheduler_name=facts.default_scheduler,
                        latents=latents, inputs=inputs,
                        callback=StepCallback(item.on_step, item.cancel, recorder, renderer), recorder=recorder,
                        position=position, started=started, warnings=warnings)

    def before_loop(self, pipe: Any, request: GenerationRequest, kwargs: dict[str, Any],
                    scheduler: Any) -> tuple[dict[str, Any], torch.Tensor]:
        """(the job's conditioning, its initial latents), the job's ``scheduler`` set to the pipeline's
        timesteps. ``kwargs``: what ``generate`` passes the pipeline."""
        raise NotImplementedError

    def predict(self, pipe: Any, jobs: list[BatchJob], index: int, t: torch.Tensor) -> list[torch.Tensor]:
        raise NotImplementedError

    def decode(self, pipe: Any, job: BatchJob, latents: torch.Tensor) -> list[Image.Image]:
        assert job.request.width is not None and job.request.height is not None
        return self.adapter.decode(pipe, latents, job.request.width, job.request.height)


def _generator(kwargs: dict[str, Any]) -> Any:
    return kwargs["generator"]


def _flow_sigmas(scheduler: Any, steps: int) -> Any:
    """FLUX's default sigmas (None where the scheduler makes its own: ``use_flow_sigmas``)."""
    if getattr(scheduler.config, "use_flow_sigmas", False):
        return None
    return np.linspace(1.0, 1 / steps, steps)


def _shift(scheduler: Any, sequence_length: int, max_shift: float = 1.15) -> float:
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    config = scheduler.config
    return float(calculate_shift(sequence_length, config.get("base_image_seq_len", 256),
                                 config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                                 config.get("max_shift", max_shift)))


def _timesteps(scheduler: Any, steps: int, device: Any, **kwargs: Any) -> None:
    from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

    retrieve_timesteps(scheduler, steps, device, **kwargs)


def _cfg_rows(job: BatchJob) -> int:
    return 2 if job.inputs["cfg"] else 1


def _latent_rows(jobs: list[BatchJob]) -> torch.Tensor:
    """Each job's latents, twice for a job with a CFG pass (its two halves of rows)."""
    return torch.cat([torch.cat([job.latents] * _cfg_rows(job)) for job in jobs])


def _per_job(jobs: list[BatchJob], prediction: torch.Tensor,
             guide: Callable[[BatchJob, torch.Tensor, torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
    """Each job's rows of ``prediction``; a job with a CFG pass gets its two halves combined by
    ``guide(job, first half, second half)``, in the order its pipeline lays them out."""
    halves = prediction.split([job.rows * _cfg_rows(job) for job in jobs])
    return [guide(job, *rows.chunk(2)) if job.inputs["cfg"] else rows for job, rows in zip(jobs, halves, strict=True)]


def _cfg(job: BatchJob, uncond: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
    return uncond + job.inputs["guidance"] * (cond - uncond)


class Flux1Batch(FlowBatch):
    family = "flux1"
    pipeline = "FluxPipeline"

    def before_loop(self, pipe: Any, request: GenerationRequest, kwargs: dict[str, Any],
                    scheduler: Any) -> tuple[dict[str, Any], torch.Tensor]:
        assert request.width is not None and request.height is not None and request.num_inference_steps is not None
        device = pipe._execution_device
        embeds, pooled, text_ids = pipe.encode_prompt(prompt=kwargs["prompt"], prompt_2=None, device=device,
                                                      num_images_per_prompt=request.num_images,
                                                      max_sequence_length=512)
        latents, image_ids = pipe.prepare_latents(request.num_images, pipe.transformer.config.in_channels // 4,
                                                  request.height, request.width, embeds.dtype, device,
                                                  _generator(kwargs))
        steps = request.num_inference_steps
        _timesteps(scheduler, steps, device, sigmas=_flow_sigmas(scheduler, steps), mu=_shift(scheduler,
                                                                                               latents.shape[1]))
        scheduler.set_begin_index(0)
        guidance = float(kwargs["guidance_scale"] or 0.0)
        return {"embeds": embeds, "pooled": pooled, "text_ids": text_ids, "image_ids": image_ids,
                "guidance": guidance}, latents

    def predict(self, pipe: Any, jobs: list[BatchJob], index: int, t: torch.Tensor) -> list[torch.Tensor]:
        latents = torch.cat([job.latents for job in jobs])
        guidance = None
        if pipe.transformer.config.guidance_embeds:  # dev; schnell takes none
            guidance = torch.cat([torch.full([job.rows], job.inputs["guidance"], device=latents.device,
                                             dtype=torch.float32) for job in jobs])
        prediction = pipe.transformer(
            hidden_states=latents,
            timestep=t.expand(latents.shape[0]).to(latents.dtype) / 1000,
            guidance=guidance,
            pooled_projections=torch.cat([job.inputs["pooled"] for job in jobs]),
            encoder_hidden_states=torch.cat([job.inputs["embeds"] for job in jobs]),
            txt_ids=jobs[0].inputs["text_ids"],
            img_ids=jobs[0].inputs["image_ids"],
            joint_attention_kwargs={},
            return_dict=False,
        )[0]
        return list(prediction.split([job.rows for job in jobs]))


class Sd3Batch(FlowBatch):
    family = "sd3"
    pipeline = "StableDiffusion3Pipeline"

    def before_loop(self, pipe: Any, request: GenerationRequest, kwargs: dict[str, Any],
                    scheduler: Any) -> tuple[dict[str, Any], torch.Tensor]:
        assert request.width is not None and request.height is not None and request.num_inference_steps is not None
        device = pipe._execution_device
        cfg = float(kwargs["guidance_scale"]) > 1  # the pipeline's do_classifier_free_guidance
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            prompt=kwargs["prompt"], prompt_2=None, prompt_3=None, negative_prompt=kwargs.get("negative_prompt"),
            do_classifier_free_guidance=cfg, device=device, num_images_per_prompt=request.num_images,
            max_sequence_length=256)
        latents = pipe.prepare_latents(request.num_images, pipe.transformer.config.in_channels, request.height,
                                       request.width, embeds.dtype, device, _generator(kwargs))
        extra: dict[str, Any] = {}
        if scheduler.config.get("use_dynamic_shifting", None):  # SD3's calculate_shift is FLUX's, max 1.16
            patch = pipe.transformer.config.patch_size
            extra["mu"] = _shift(scheduler, (latents.shape[2] // patch) * (latents.shape[3] // patch), max_shift=1.16)
        _timesteps(scheduler, request.num_inference_steps, device, sigmas=None, **extra)
        rows = (torch.cat([negative, embeds]), torch.cat([negative_pooled, pooled])) if cfg else (embeds, pooled)
        return {"cfg": cfg, "embeds": rows[0], "pooled": rows[1], "guidance": float(kwargs["guidance_scale"])}, latents

    def predict(self, pipe: Any, jobs: list[BatchJob], index: int, t: torch.Tensor) -> list[torch.Tensor]:
        latents = _latent_rows(jobs)
        prediction = pipe.transformer(
            hidden_states=latents,
            timestep=t.expand(latents.shape[0]),
            encoder_hidden_states=torch.cat([job.inputs["embeds"] for job in jobs]),
            pooled_projections=torch.cat([job.inputs["pooled"] for job in jobs]),
            joint_attention_kwargs=None,
            return_dict=False,
        )[0]
        return _per_job(jobs, prediction, _cfg)  # the pipeline's [uncond; cond]


class ZImageBatch(FlowBatch):
    """The pipeline's ``cfg_truncation`` (1.0) and ``cfg_normalization`` (off) defaults change nothing,
    and ``generate`` passes neither, so the guided prediction here is the plain one."""

    family = "zimage"
    pipeline = "ZImagePipeline"

    def before_loop(self, pipe: Any, request: GenerationRequest, kwargs: dict[str, Any],
                    scheduler: Any) -> tuple[dict[str, Any], torch.Tensor]:
        from diffusers.pipelines.z_image.pipeline_z_image import get_default_z_image_sigmas

        assert request.width is not None and request.height is not None and request.num_inference_steps is not None
        device = pipe._execution_device
        guidance = float(kwargs["guidance_scale"])
        cfg = guidance > 0  # the pipeline's do_classifier_free_guidance
        embeds, negative = pipe.encode_prompt(prompt=kwargs["prompt"], negative_prompt=kwargs.get("negative_prompt"),
                                              do_classifier_free_guidance=cfg, device=device,
                                              max_sequence_length=512)
        latents = pipe.prepare_latents(request.num_images, pipe.transformer.in_channels, request.height,
                                       request.width, torch.float32, device, _generator(kwargs))
        embeds = [e for e in embeds for _ in range(request.num_images)]
        negative = [e for e in negative for _ in range(request.num_images)]
        steps = request.num_inference_steps
        mu = _shift(scheduler, (latents.shape[2] // 2) * (latents.shape[3] // 2))
        _timesteps(scheduler, steps, device, sigmas=get_default_z_image_sigmas(steps), mu=mu)
        scheduler.set_begin_index(0)
        return {"cfg": cfg, "captions": embeds + (negative if cfg else []), "guidance": guidance}, latents

    def predict(self, pipe: Any, jobs: list[BatchJob], index: int, t: torch.Tensor) -> list[torch.Tensor]:
        dtype = pipe.transformer.dtype
        images: list[torch.Tensor] = []
        captions: list[torch.Tensor] = []
        for job in jobs:  # per job: its images' rows, then (CFG) the same latents again for the negatives
            rows = job.latents.to(dtype).repeat(_cfg_rows(job), 1, 1, 1).unsqueeze(2)
            images.extend(rows.unbind(dim=0))
            captions.extend(job.inputs["captions"])
        timestep = (1000 - t.expand(len(images))) / 1000
        outputs = pipe.transformer(images, timestep, captions, joint_attention_kwargs=None, return_dict=False)[0]
        guided: list[torch.Tensor] = []
        start = 0
        for job in jobs:
            positive = outputs[start : start + job.rows]
            if job.inputs["cfg"]:
                negative = outputs[start + job.rows : start + 2 * job.rows]
                g = job.inputs["guidance"]
                prediction = torch.stack([p.float() + g * (p.float() - n.float())
                                          for p, n in zip(positive, negative, strict=True)])
            else:
                prediction = torch.stack([p.float() for p in positive])
            start += job.rows * _cfg_rows(job)
            guided.append((-prediction.squeeze(2)).to(torch.float32))
        return guided


class QwenImageBatch(FlowBatch):
    family = "qwenimage"
    pipeline = "QwenImagePipeline"

    def refusal(self, slot: ModelSlot) -> str | None:
        reason = super().refusal(slot)
        if reason is None and slot.model.text_to_image.transformer.config.get("guidance_embeds"):
            return "a guidance-distilled Qwen-Image transformer is not batched yet"
        return reason

    def before_loop(self, pipe: Any, request: GenerationRequest, kwargs: dict[str, Any],
                    scheduler: Any) -> tuple[dict[str, Any], torch.Tensor]:
        assert request.width is not None and request.height is not None and request.num_inference_steps is not None
        device = pipe._execution_device
        n = request.num_images
        guidance = float(kwargs["true_cfg_scale"])
        cfg = guidance > 1 and kwargs.get("negative_prompt") is not None  # the pipeline's do_true_cfg
        texts = [pipe.encode_prompt(prompt=kwargs["prompt"], device=device, num_images_per_prompt=n,
                                    max_sequence_length=512)]
        if cfg:
            texts.append(pipe.encode_prompt(prompt=kwargs["negative_prompt"], device=device, num_images_per_prompt=n,
                                            max_sequence_length=512))
        embeds = [e for e, _ in texts]
        masks = [torch.ones(e.shape[:2], dtype=torch.bool, device=e.device) if m is None else m.bool()
                 for e, m in texts]
        latents = pipe.prepare_latents(n, pipe.transformer.config.in_channels // 4, request.height, request.width,
                                       embeds[0].dtype, device, _generator(kwargs))
        steps = request.num_inference_steps
        _timesteps(scheduler, steps, device, sigmas=np.linspace(1.0, 1 / steps, steps),
                   mu=_shift(scheduler, latents.shape[1]))
        scheduler.set_begin_index(0)
        grid = (1, request.height // pipe.vae_scale_factor // 2, request.width // pipe.vae_scale_factor // 2)
        return {"cfg": cfg, "embeds": embeds, "masks": masks, "grid": grid, "guidance": guidance}, latents

    def predict(self, pipe: Any, jobs: list[BatchJob], index: int, t: torch.Tensor) -> list[torch.Tensor]:
        latents = _latent_rows(jobs)
        embeds = [e for job in jobs for e in job.inputs["embeds"]]
        masks = [m for job in jobs for m in job.inputs["masks"]]
        longest = max(e.shape[1] for e in embeds)
        padded = torch.cat([torch.nn.functional.pad(e, (0, 0, 0, longest - e.shape[1])) for e in embeds])
        mask = torch.cat([torch.nn.functional.pad(m, (0, longest - m.shape[1])) for m in masks])
        prediction = pipe.transformer(
            hidden_states=latents,
            timestep=t.expand(latents.shape[0]).to(latents.dtype) / 1000,
            guidance=None,
            encoder_hidden_states_mask=None if bool(mask.all()) else mask,  # as solo: no mask when nothing pads
            encoder_hidden_states=padded,
            img_shapes=[[jobs[0].inputs["grid"]]] * latents.shape[0],
            attention_kwargs={},
            return_dict=False,
        )[0]
        return _per_job(jobs, prediction, _true_cfg)


def _true_cfg(job: BatchJob, cond: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Qwen-Image's true CFG, rescaled to the cond prediction's norm as its pipeline does."""
    combined = _cfg(job, negative, cond)
    return combined * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(combined, dim=-1, keepdim=True))


class Flux2Batch(FlowBatch):
    """klein (``Flux2KleinPipeline``) and dev (``Flux2Pipeline``: a Mistral 3 encoder padded to 512 tokens,
    and distilled guidance, a per-row transformer input as FLUX.1 dev's) follow the same loop."""

    family = "flux2"
    pipeline = "Flux2KleinPipeline"

    def refusal(self, slot: ModelSlot) -> str | None:
        pipe = slot.model.text_to_image
        if pipe is None or type(pipe).__name__ not in ("Flux2KleinPipeline", "Flux2Pipeline"):
            return "only Flux2KleinPipeline and Flux2Pipeline models batch"
        return None

    def before_loop(self, pipe: Any, request: GenerationRequest, kwargs: dict[str, Any],
                    scheduler: Any) -> tuple[dict[str, Any], torch.Tensor]:
        from diffusers.pipelines.flux2.pipeline_flux2_klein import compute_empirical_mu

        assert request.width is not None and request.height is not None and request.num_inference_steps is not None
        device = pipe._execution_device
        n = request.num_images
        guidance = float(kwargs["guidance_scale"])
        # klein's do_classifier_free_guidance; dev (no is_distilled) has no CFG pass: guidance is an input
        cfg = guidance > 1 and not pipe.config.get("is_distilled", True)
        embeds, text_ids = pipe.encode_prompt(prompt=kwargs["prompt"], device=device, num_images_per_prompt=n,
                                              max_sequence_length=512)
        texts = [(embeds, text_ids)]
        if cfg:  # klein base's CFG runs against the empty prompt
            texts.append(pipe.encode_prompt(prompt="", device=device, num_images_per_prompt=n,
                                            max_sequence_length=512))
        channels = pipe.transformer.config.in_channels // 4
        latents, latent_ids = pipe.prepare_latents(batch_size=n, num_latents_channels=channels, height=request.height,
                                                   width=request.width, dtype=embeds.dtype, device=device,
                                                   generator=_generator(kwargs), latents=None)
        steps = request.num_inference_steps
        _timesteps(scheduler, steps, device, sigmas=_flow_sigmas(scheduler, steps),
                   mu=compute_empirical_mu(image_seq_len=latents.shape[1], num_steps=steps))
        scheduler.set_begin_index(0)
        return {"cfg": cfg, "embeds": torch.cat([e for e, _ in texts]), "text_ids": torch.cat([i for _, i in texts]),
                "latent_ids": torch.cat([latent_ids] * len(texts)), "guidance": guidance}, latents

    def predict(self, pipe: Any, jobs: list[BatchJob], index: int, t: torch.Tensor) -> list[torch.Tensor]:
        latents = _latent_rows(jobs)
        guidance = None
        if pipe.transformer.config.guidance_embeds:  # dev: each job's own guidance on its rows
            guidance = torch.cat([torch.full([job.rows * _cfg_rows(job)], job.inputs["guidance"], device=latents.device,
                                             dtype=torch.float32) for job in jobs])
        prediction = pipe.transformer(
            hidden_states=latents.to(pipe.transformer.dtype),
            timestep=t.expand(latents.shape[0]).to(latents.dtype) / 1000,
            guidance=guidance,
            encoder_hidden_states=torch.cat([job.inputs["embeds"] for job in jobs]),
            txt_ids=torch.cat([job.inputs["text_ids"] for job in jobs]),
            img_ids=torch.cat([job.inputs["latent_ids"] for job in jobs]),
            joint_attention_kwargs=None,
            return_dict=False,
        )[0]
        return _per_job(jobs, prediction[:, : latents.size(1)], lambda job, cond, negative: _cfg(job, negative, cond))


HOOKS: dict[str, FlowBatch] = {hooks.family: hooks for hooks in (Flux1Batch(), Sd3Batch(), ZImageBatch(),
                                                                  QwenImageBatch(), Flux2Batch())}

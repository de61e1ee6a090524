"""One denoising loop for several FLUX.1 text-to-image jobs: one transformer call per step serves all.

The rule is SD batching's (``batch``): each job keeps everything that decides its pixels, so they match
its solo ``generate`` (within float rounding of a wider matmul: the engine tests hold each job within
40 dB PSNR of its solo run, and most are equal):

- its text embeddings, pooled embedding and text ids from the pipeline's own ``encode_prompt``;
- its CPU generators and the pipeline's own ``prepare_latents`` (the noise drawn in the solo order);
- its own scheduler instance with the pipeline's sigmas and ``mu`` (one size and step count give every
  job the same schedule), and its own ``step`` on its own latents;
- its guidance: FLUX.1 dev takes ``guidance`` as a per-row input of the transformer, so jobs of different
  guidance share a call;
- its step callback (progress, previews of its own x0, cancel, interrupt).

Shared: the transformer call, rows ``[job 1's images..., job 2's...]``. FLUX.1 has no classifier-free
pass, so there are no uncond rows. All jobs' T5 embeddings have the pipeline's fixed length (512), and
the text and image position ids are the same for every row, so the batch is a plain concatenation.

A job that leaves (cancelled, hook failed, interrupted) leaves the batch at once; a failure of the shared
call fails every job still in the loop, mapped as ``generate`` maps it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from sdworker.domain.families import family_facts
from sdworker.domain.request import GenerationRequest
from sdworker.domain.result import AppliedLora, GenerationResult
from sdworker.engine.batch import failure
from sdworker.engine.families import flow_adapter, ignored_field_warnings, unpacking_renderer
from sdworker.engine.protocol import BatchItem
from sdworker.engine.step_hook import Interrupted, StepCallback
from sdworker.engine.x0 import X0Recorder
from sdworker.errors import GenerationFailed, JobCancelled

if TYPE_CHECKING:
    from sdworker.engine.slots import ModelSlot

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class FlowJob:
    request: GenerationRequest
    seeds: tuple[int, ...]
    scheduler: Any
    prompt_embeds: torch.Tensor
    pooled: torch.Tensor
    text_ids: torch.Tensor
    image_ids: torch.Tensor
    latents: torch.Tensor  # packed (rows, tokens, 64)
    callback: StepCallback
    recorder: X0Recorder
    warnings: tuple[str, ...]
    position: int
    started: float
    images: list[Image.Image] | None = None
    error: Exception | None = None
    steps_run: int = 0
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return int(self.latents.shape[0])

    def finish(self, images: list[Image.Image] | None = None, error: Exception | None = None) -> None:
        self.images, self.error = images, error
        self.seconds = time.perf_counter() - self.started
        self.recorder.close()

    def outcome(self, slot: ModelSlot, applied: tuple[AppliedLora, ...]) -> GenerationResult | Exception:
        if self.images is None:
            return self.error or GenerationFailed("generation failed (no image); see the worker log")
        return slot.result(self.request, self.images, self.seeds, family_facts(slot.model.family).default_scheduler,
                           self.steps_run, self.seconds, applied, self.warnings)


def can_batch_flow(slot: ModelSlot) -> bool:
    """FLUX.1 text-to-image models (dev and schnell); the other flow families run alone for now."""
    return slot.model.family == "flux1" and slot.model.text_to_image is not None


def run_flow_group(
    slot: ModelSlot,
    applied: tuple[AppliedLora, ...],
    members: list[tuple[int, BatchItem, str, int]],
    alone: Callable[[BatchItem], GenerationResult | Exception],
) -> dict[int, GenerationResult | Exception]:
    """As ``batch.run_group``, for a FLUX.1 model: outcomes by position; jobs that cannot share go alone."""
    outcomes: dict[int, GenerationResult | Exception] = {}
    jobs: list[FlowJob] = []
    if can_batch_flow(slot):
        started = time.perf_counter()
        for position, item, prompt, seed in members:
            try:
                if item.cancel is not None:
                    item.cancel.raise_if_cancelled()
                jobs.append(prepare_flow_job(slot, position, item, prompt, seed, started))
            except Exception as exc:
                outcomes[position] = failure(exc)
    if len(jobs) > 1:
        denoise_flow(slot.model.text_to_image, jobs)
        outcomes.update({job.position: job.outcome(slot, applied) for job in jobs})
    else:
        for job in jobs:
            job.recorder.close()
    for position, item, _, _ in members:
        if position not in outcomes:
            outcomes[position] = alone(item)
    return outcomes


def prepare_flow_job(
    slot: ModelSlot, position: int, item: BatchItem, prompt: str, seed: int, started: float
) -> FlowJob:
    """What ``FluxPipeline.__call__`` makes before its loop, for this job alone."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

    adapter = flow_adapter("flux1")
    assert adapter is not None
    request = item.request
    assert request.width is not None and request.height is not None and request.num_inference_steps is not None
    pipe = slot.model.text_to_image
    device = pipe._execution_device
    text, syntax_removed = adapter.plain_prompt(prompt)
    warnings = ignored_field_warnings(request, family_facts("flux1"), slot.entry.variant,
                                      syntax_removed=syntax_removed)
    seeds = tuple(seed + i for i in range(request.num_images))
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    prompt_embeds, pooled, text_ids = pipe.encode_prompt(
        prompt=text, prompt_2=None, device=device, num_images_per_prompt=request.num_images, max_sequence_length=512)
    latents, image_ids = pipe.prepare_latents(
        request.num_images, pipe.transformer.config.in_channels // 4, request.height, request.width,
        prompt_embeds.dtype, device, generators[0] if len(generators) == 1 else generators)
    scheduler, _ = slot.schedulers.create(None)
    steps = request.num_inference_steps
    mu = calculate_shift(latents.shape[1], scheduler.config.get("base_image_seq_len", 256),
                         scheduler.config.get("max_image_seq_len", 4096), scheduler.config.get("base_shift", 0.5),
                         scheduler.config.get("max_shift", 1.15))
    sigmas = np.linspace(1.0, 1 / steps, steps)  # the very array FluxPipeline passes (typed as a list there)
    retrieve_timesteps(scheduler, steps, device, sigmas=sigmas, mu=mu)  # type: ignore[arg-type]
    scheduler.set_begin_index(0)
    recorder = X0Recorder(scheduler)
    renderer = unpacking_renderer(slot.render_preview, adapter, request, pipe)
    return FlowJob(request=request, seeds=seeds, scheduler=scheduler, prompt_embeds=prompt_embeds, pooled=pooled,
                   text_ids=text_ids, image_ids=image_ids, latents=latents,
                   callback=StepCallback(item.on_step, item.cancel, recorder, renderer), recorder=recorder,
                   warnings=warnings, position=position, started=started)


def denoise_flow(pipe: Any, jobs: list[FlowJob]) -> None:
    """Run the shared loop and decode each job; every job ends with ``images`` or ``error``."""
    active = list(jobs)
    try:
        with torch.no_grad():
            _loop(pipe, active)
            for job in list(active):
                active.remove(job)
                _decode(job, pipe, job.latents)
    except Exception as exc:
        log.exception("batched FLUX generation failed")
        for job in active:
            job.finish(error=failure(exc))
    finally:
        for job in jobs:
            job.recorder.close()


def _loop(pipe: Any, active: list[FlowJob]) -> None:
    timesteps = active[0].scheduler.timesteps
    progress = SimpleNamespace(_num_timesteps=len(timesteps))
    guided = pipe.transformer.config.guidance_embeds
    for i, t in enumerate(timesteps):
        latents = torch.cat([job.latents for job in active])
        guidance = torch.cat([torch.full([job.rows], float(job.request.guidance_scale or 0.0),
                                         device=latents.device, dtype=torch.float32) for job in active])
        prediction = pipe.transformer(
            hidden_states=latents,
            timestep=t.expand(latents.shape[0]).to(latents.dtype) / 1000,
            guidance=guidance if guided else None,
            pooled_projections=torch.cat([job.pooled for job in active]),
            encoder_hidden_states=torch.cat([job.prompt_embeds for job in active]),
            txt_ids=active[0].text_ids,
            img_ids=active[0].image_ids,
            joint_attention_kwargs={},
            return_dict=False,
        )[0]
        row = 0
        for job in active:
            job.latents = job.scheduler.step(prediction[row : row + job.rows], t, job.latents, return_dict=False)[0]
            row += job.rows
        del prediction, latents
        for job in [job for job in active if not _report(pipe, job, progress, i, t)]:
            active.remove(job)
        if not active:
            return
    for job in active:
        job.steps_run = len(timesteps)


def _report(pipe: Any, job: FlowJob, progress: Any, index: int, t: Any) -> bool:
    try:
        job.callback(progress, index, t, {"latents": job.latents})
    except Interrupted as stop:
        job.steps_run = stop.steps_done
        _decode(job, pipe, stop.latents)
    except JobCancelled as exc:
        job.finish(error=exc)
    except Exception as exc:
        log.exception("step hook failed in a batched FLUX job")
        job.finish(error=failure(exc))
    else:
        return True
    return False


def _decode(job: FlowJob, pipe: Any, latents: torch.Tensor) -> None:
    adapter = flow_adapter("flux1")
    assert adapter is not None and job.request.width is not None and job.request.height is not None
    try:
        images = adapter.decode(pipe, latents, job.request.width, job.request.height)
    except Exception as exc:
        log.exception("decoding a batched FLUX job failed")
        job.finish(error=failure(exc))
    else:
        job.finish(images=images)

"""One denoising loop for several text-to-image jobs: one UNet call per step serves all of them.

Why: at 512 px a UNet call on one job's two rows (uncond + cond) leaves much of a GPU idle; three jobs
in one call of six rows cost far less than three calls. ``batch_plan`` says which jobs may share.

Each job keeps everything that decides its pixels, so they equal its solo ``generate`` (the engine
tests measure it against ``generate``):

- its text embeddings, made by the pipeline's own ``encode_prompt`` (from the prompt, or from the
  A1111-style encoder's output, as ``generate`` hands them to the pipeline);
- its CPU generators, drawn in the solo order: the initial noise first (``prepare_latents``'s
  ``randn_tensor`` times ``init_noise_sigma``), then the noise of ancestral/SDE steps, which its own
  ``scheduler.step`` draws from them;
- its own scheduler instance (schedulers keep state: step index, multistep history), its own
  ``scale_model_input`` and ``step`` on its own latents, and its own guidance scale;
- its step callback (``StepCallback``: hook, previews from its own x0 recorder, cancel, interrupt).

What is shared: the UNet call. Its rows are ``[uncond of every job..., cond of every job...]``, the
pipeline's ``[uncond; cond]`` layout widened to several jobs, so ``chunk(2)`` still splits the
prediction into the two halves and each job reads its rows at the same offset in both. The timestep is
the same for all (one model, scheduler and step count give one schedule).

Leaving early: after every step each job's callback runs. A cancelled job (or one whose hook raised)
leaves the loop: its rows leave the input and the embeddings, and the others go on with a smaller
batch at once. An interrupted job is decoded there and then from its x0/latents, like ``generate``.
An exception in the shared part (the UNet call) fails every job still in the loop, mapped the way
``generate`` maps it; nothing is raised to the caller for a job's problem.
"""

from __future__ import annotations

import inspect
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from sdworker.domain.request import GenerationRequest
from sdworker.domain.result import AppliedLora, GenerationResult
from sdworker.engine.decoding import decode_latents, decode_like_pipeline, decode_like_xl_pipeline
from sdworker.engine.protocol import BatchItem
from sdworker.engine.step_hook import Interrupted, StepCallback
from sdworker.engine.x0 import X0Recorder
from sdworker.errors import GenerationFailed, JobCancelled, SdworkerError

if TYPE_CHECKING:
    from sdworker.engine.slots import ModelSlot

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class BatchJob:
    """One job's own state inside a shared loop; ``images`` or ``error`` is its outcome."""

    request: GenerationRequest
    seeds: tuple[int, ...]
    scheduler: Any
    scheduler_name: str
    prompt_embeds: torch.Tensor  # (num_images, tokens, features), as encode_prompt returns them
    negative_prompt_embeds: torch.Tensor
    pooled: tuple[torch.Tensor, torch.Tensor] | None  # SDXL's (negative, positive) pooled embeddings
    time_ids: torch.Tensor | None  # SDXL's size conditioning, one row (the same for uncond and cond)
    latents: torch.Tensor
    step_kwargs: dict[str, Any]  # eta/generator, where this scheduler's step takes them
    callback: StepCallback
    recorder: X0Recorder
    position: int  # in the caller's list of items
    started: float  # the group's start: a job's ``seconds`` is the wall time it waited for its images
    images: list[Image.Image] | None = None
    error: Exception | None = None
    steps_run: int = 0
    seconds: float = 0.0

    @property
    def rows(self) -> int:
        return int(self.latents.shape[0])

    @property
    def sequence_length(self) -> int:
        return int(self.prompt_embeds.shape[1])

    def finish(self, images: list[Image.Image] | None = None, error: Exception | None = None) -> None:
        self.images, self.error = images, error
        self.seconds = time.perf_counter() - self.started
        self.recorder.close()

    def outcome(self, slot: ModelSlot, applied: tuple[AppliedLora, ...]) -> GenerationResult | Exception:
        """The job's result, with the fields ``generate`` fills, or its error."""
        if self.images is None:
            return self.error or GenerationFailed("generation failed (no image); see the worker log")
        return slot.result(self.request, self.images, self.seeds, self.scheduler_name, self.steps_run, self.seconds,
                           applied)


def run_group(
    slot: ModelSlot,
    applied: tuple[AppliedLora, ...],
    members: list[tuple[int, BatchItem, str, int]],
    alone: Callable[[BatchItem], GenerationResult | Exception],
) -> dict[int, GenerationResult | Exception]:
    """Outcomes by position for a group ``batch_plan`` keyed together, members given as (position,
    item, prompt without LoRA tags, seed), on the loaded ``slot`` (LoRAs off). Jobs whose prompts
    encode to one length share a loop; one left on its own, or a model that cannot batch, goes to
    ``alone`` (``generate``), in order."""
    outcomes: dict[int, GenerationResult | Exception] = {}
    by_length: dict[int, list[BatchJob]] = {}
    if can_batch_on(slot):
        started = time.perf_counter()
        for position, item, prompt, seed in members:
            try:
                if item.cancel is not None:
                    item.cancel.raise_if_cancelled()
                job = prepare_job(slot, position, item, prompt, seed, started)
            except Exception as exc:  # this job's problem (encoding, cancelled before its start)
                outcomes[position] = failure(exc)
                continue
            by_length.setdefault(job.sequence_length, []).append(job)
    for jobs in by_length.values():
        if len(jobs) > 1:
            denoise(slot.model.text_to_image, jobs)
            outcomes.update({job.position: job.outcome(slot, applied) for job in jobs})
        else:
            jobs[0].recorder.close()  # prepared for nothing: it runs alone below
    for position, item, _, _ in members:
        if position not in outcomes:
            outcomes[position] = alone(item)
    return outcomes


def can_batch_on(slot: ModelSlot) -> bool:
    """Models whose UNet takes guidance as an embedding (LCM: ``time_cond_proj_dim``) run no
    classifier-free guidance in the pipeline: a different row layout, so they run alone."""
    return slot.model.text_to_image.unet.config.get("time_cond_proj_dim") is None


def prepare_job(
    slot: ModelSlot, position: int, item: BatchItem, prompt: str, seed: int, started: float
) -> BatchJob:
    """Everything ``StableDiffusion(XL)Pipeline.__call__`` makes before its loop, for this job alone."""
    request = item.request
    pipe = slot.model.text_to_image
    device = pipe._execution_device
    seeds = tuple(seed + i for i in range(request.num_images))
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    generator: Any = generators[0] if len(generators) == 1 else generators  # as generate passes it
    positive, negative, pooled = _encode(slot, request, prompt, device)
    scheduler, scheduler_name = slot.schedulers.create(request.scheduler)
    scheduler.set_timesteps(request.num_inference_steps, device=device)  # retrieve_timesteps, then latents
    shape = (
        request.num_images,
        pipe.unet.config.in_channels,
        request.height // pipe.vae_scale_factor,
        request.width // pipe.vae_scale_factor,
    )
    latents = randn_tensor(shape, generator=generator, device=device, dtype=positive.dtype)
    latents = latents * scheduler.init_noise_sigma
    time_ids = None
    if pooled is not None:  # SDXL: original and target size = the output size, no crop (the defaults)
        projection = pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None else None
        size = (request.height, request.width)
        time_ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=positive.dtype,
                                          text_encoder_projection_dim=projection or int(pooled[1].shape[-1]))
        time_ids = time_ids.to(device)
        if hasattr(scheduler, "set_begin_index"):  # the SDXL pipeline does, just before its loop
            scheduler.set_begin_index(0)
    recorder = X0Recorder(scheduler)  # wraps step; its signature stays visible to the check below
    accepts = set(inspect.signature(scheduler.step).parameters)
    step_kwargs: dict[str, Any] = {}
    if "eta" in accepts:
        step_kwargs["eta"] = 0.0  # the pipeline's default
    if "generator" in accepts:
        step_kwargs["generator"] = generator
    return BatchJob(
        request=request,
        seeds=seeds,
        scheduler=scheduler,
        scheduler_name=scheduler_name,
        prompt_embeds=positive,
        negative_prompt_embeds=negative,
        pooled=pooled,
        time_ids=time_ids,
        latents=latents,
        step_kwargs=step_kwargs,
        callback=StepCallback(item.on_step, item.cancel, recorder, slot.render_preview),
        recorder=recorder,
        position=position,
        started=started,
    )


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


def denoise(pipe: Any, jobs: list[BatchJob]) -> None:
    """Run the shared loop and decode; every job ends with ``images`` or ``error`` (nothing raised)."""
    active = list(jobs)
    try:
        with torch.no_grad():
            _loop(pipe, active)
            for job in list(active):
                active.remove(job)
                _decode(job, decode_like_xl_pipeline if job.pooled else decode_like_pipeline, pipe, job.latents)
    except Exception as exc:  # the shared part failed: every job still in the loop fails with it
        log.exception("batched generation failed")
        for job in active:
            job.finish(error=failure(exc))
    finally:
        for job in jobs:  # nothing keeps the tensors of a finished batch
            job.recorder.close()
            job.step_kwargs.clear()


def _loop(pipe: Any, active: list[BatchJob]) -> None:
    """The pipeline's denoising loop over several jobs; ``active`` shrinks as jobs leave."""
    timesteps = active[0].scheduler.timesteps
    # StepCallback reads the step count where diffusers keeps it, on the pipeline (``_num_timesteps``).
    progress = SimpleNamespace(_num_timesteps=len(timesteps))
    embeddings, added_cond_kwargs = _conditioning(active)
    for i, t in enumerate(timesteps):
        scaled = [job.scheduler.scale_model_input(job.latents, job.scheduler.timesteps[i]) for job in active]
        noise_pred = pipe.unet(
            torch.cat(scaled + scaled),
            t,
            encoder_hidden_states=embeddings,
            timestep_cond=None,
            cross_attention_kwargs=None,
            added_cond_kwargs=added_cond_kwargs,
            return_dict=False,
        )[0]
        uncond_rows, cond_rows = noise_pred.chunk(2)
        row = 0
        for job in active:
            uncond, cond = uncond_rows[row : row + job.rows], cond_rows[row : row + job.rows]
            row += job.rows
            guided = uncond + job.request.guidance_scale * (cond - uncond)
            step = job.scheduler.step(guided, job.scheduler.timesteps[i], job.latents, **job.step_kwargs,
                                      return_dict=False)
            job.latents = step[0]
        del noise_pred, uncond_rows, cond_rows, scaled
        leaving = [job for job in active if not _report(pipe, job, progress, i, t)]
        if leaving:
            for job in leaving:
                active.remove(job)
            if not active:
                return
            embeddings, added_cond_kwargs = _conditioning(active)  # the others go on, a smaller batch
    for job in active:
        job.steps_run = len(timesteps)


def _conditioning(jobs: list[BatchJob]) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
    """The UNet's text conditioning for these jobs' rows, ``[uncond of every job..., cond of every
    job...]``: the pipeline's ``cat([negative, positive])`` (SDXL: its pooled embeddings the same way,
    and its size conditioning, one row per UNet row: all equal, as the group has one size)."""
    embeddings = torch.cat([job.negative_prompt_embeds for job in jobs] + [job.prompt_embeds for job in jobs])
    pooled = [job.pooled for job in jobs if job.pooled is not None]
    time_ids = [job.time_ids.repeat(job.rows, 1) for job in jobs if job.time_ids is not None]
    if not pooled:
        return embeddings, None
    text_embeds = torch.cat([negative for negative, _ in pooled] + [positive for _, positive in pooled])
    return embeddings, {"text_embeds": text_embeds, "time_ids": torch.cat(time_ids + time_ids)}


def _report(pipe: Any, job: BatchJob, progress: Any, index: int, t: Any) -> bool:
    """Run the job's step callback; False when the job leaves the loop (finished one way or another)."""
    try:
        job.callback(progress, index, t, {"latents": job.latents})
    except Interrupted as stop:  # A1111's interrupt: finish this one with the latents it has
        job.steps_run = stop.steps_done
        _decode(job, decode_latents, pipe, stop.latents)
    except JobCancelled as exc:
        job.finish(error=exc)
    except Exception as exc:  # its hook failed: that job fails, as it would alone; the others go on
        log.exception("step hook failed in a batched job")
        job.finish(error=failure(exc))
    else:
        return True
    return False


def _decode(job: BatchJob, decode: Any, pipe: Any, latents: torch.Tensor) -> None:
    """Decode one job's latents (one job at a time: the same VAE batch as its solo run, and a peak
    memory of one job's decode, not the whole batch's)."""
    try:
        images = decode(pipe, latents)
    except Exception as exc:
        log.exception("decoding a batched job failed")
        job.finish(error=failure(exc))
    else:
        job.finish(images=images)


def failure(exc: Exception) -> Exception:
    """What ``generate`` turns an exception into: ours unchanged, the rest a ``GenerationFailed``."""
    if isinstance(exc, SdworkerError):
        return exc
    if isinstance(exc, torch.OutOfMemoryError):
        error = GenerationFailed("out of GPU memory; try fewer images or a smaller size")
    else:
        error = GenerationFailed(f"generation failed ({type(exc).__name__}); see the worker log")
    error.__cause__ = exc
    return error

"""One denoising loop for several text-to-image jobs: one network call per step serves all of them.

Why: at 512 px a UNet call on one job's two rows (uncond + cond), or a FLUX transformer call on one
job's one row, leaves much of a GPU idle; three jobs in one call cost far less than three calls.
``batch_plan`` says which jobs may share; ``batch_families`` holds what differs by family.

Each job keeps everything that decides its pixels, so they equal its solo ``generate`` within the
rounding of a wider matmul (the engine tests hold each job within 40 dB PSNR of solo, most equal):

- its text embeddings, made by the pipeline's own ``encode_prompt``;
- its CPU generators, drawn in the solo order (the pipeline's own ``prepare_latents``), then the
  noise of ancestral/SDE steps, which its own ``scheduler.step`` draws from them;
- its own scheduler instance (schedulers keep state: step index, multistep history) with the
  pipeline's timesteps (one size and step count give every job of a group the same schedule), its own
  ``step`` on its own latents, and its own guidance scale;
- its step callback (``StepCallback``: hook, previews from its own x0 recorder, cancel, interrupt).

What is shared: the network call. The family (``BatchFamily``) builds the call's rows from the
active jobs and hands back each job's guided prediction; this loop steps each job's scheduler with it.

Leaving early: after every step each job's callback runs. A cancelled job (or one whose hook raised)
leaves the loop: its rows leave the next call, and the others go on with a smaller batch at once. An
interrupted job is decoded there and then from its latents, like ``generate``. An exception in the
shared part (the network call) fails every job still in the loop, mapped the way ``generate`` maps it;
nothing is raised to the caller for a job's problem.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Protocol

import torch
from PIL import Image

from sdworker.domain.result import AppliedLora, GenerationResult
from sdworker.engine.protocol import BatchItem
from sdworker.engine.step_hook import Interrupted, StepCallback
from sdworker.engine.x0 import X0Recorder
from sdworker.errors import GenerationFailed, JobCancelled, SdworkerError

if TYPE_CHECKING:
    from sdworker.domain.request import GenerationRequest
    from sdworker.engine.slots import ModelSlot

log = logging.getLogger(__name__)


@dataclass(slots=True, eq=False)
class BatchJob:
    """One job's own state inside a shared loop; ``images`` or ``error`` is its outcome."""

    request: GenerationRequest
    seeds: tuple[int, ...]
    scheduler: Any
    scheduler_name: str
    latents: torch.Tensor
    inputs: dict[str, Any]  # the family's per-job conditioning (embeddings, ids, masks), as its pipeline makes them
    callback: StepCallback
    recorder: X0Recorder
    position: int  # in the caller's list of items
    started: float  # the group's start: a job's ``seconds`` is the wall time it waited for its images
    group: Hashable = None  # jobs share a call only with jobs of the same group (SD: the prompt's length)
    step_kwargs: dict[str, Any] = field(default_factory=dict)  # eta/generator, where this scheduler's step takes them
    warnings: tuple[str, ...] = ()
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
        """The job's result, with the fields ``generate`` fills, or its error."""
        if self.images is None:
            return self.error or GenerationFailed("generation failed (no image); see the worker log")
        return slot.result(self.request, self.images, self.seeds, self.scheduler_name, self.steps_run, self.seconds,
                           applied, self.warnings)


class BatchFamily(Protocol):
    """What a family's shared loop does its own way (``batch_families``); the loop itself is here."""

    def refusal(self, slot: ModelSlot) -> str | None:
        """Why this loaded model cannot batch (None: it can)."""

    def runs_alone(self, slot: ModelSlot, request: GenerationRequest) -> bool:
        """Whether this job needs a call of its own (a row layout the shared call does not build)."""

    def prepare(self, slot: ModelSlot, position: int, item: BatchItem, prompt: str, seed: int,
                started: float) -> BatchJob:
        """What the pipeline's ``__call__`` makes before its loop, for this job alone."""

    def predict(self, pipe: Any, jobs: list[BatchJob], index: int, t: torch.Tensor) -> list[torch.Tensor]:
        """One network call for all ``jobs``: each job's guided prediction, as its scheduler's ``step``
        takes it."""

    def decode(self, pipe: Any, job: BatchJob, latents: torch.Tensor) -> list[Image.Image]:
        """What the pipeline does after its loop (or for an interrupted job): latents to images."""


def run_group(
    slot: ModelSlot,
    family: BatchFamily,
    applied: tuple[AppliedLora, ...],
    members: list[tuple[int, BatchItem, str, int]],
    alone: Callable[[BatchItem], GenerationResult | Exception],
) -> dict[int, GenerationResult | Exception]:
    """Outcomes by position for a group ``batch_plan`` keyed together, members given as (position,
    item, prompt without LoRA tags, seed), on the loaded ``slot`` (LoRAs off). Jobs of one ``group``
    (``BatchJob.group``) share a loop; one left on its own, a job that needs its own layout, or a model
    that cannot batch goes to ``alone`` (``generate``), in order."""
    outcomes: dict[int, GenerationResult | Exception] = {}
    groups: dict[Hashable, list[BatchJob]] = {}
    if family.refusal(slot) is None:
        started = time.perf_counter()
        for position, item, prompt, seed in members:
            if family.runs_alone(slot, item.request):
                continue
            try:
                if item.cancel is not None:
                    item.cancel.raise_if_cancelled()
                job = family.prepare(slot, position, item, prompt, seed, started)
            except Exception as exc:  # this job's problem (encoding, cancelled before its start)
                outcomes[position] = failure(exc)
                continue
            groups.setdefault(job.group, []).append(job)
    pipe = slot.model.text_to_image
    for jobs in groups.values():
        if len(jobs) > 1:
            denoise(family, pipe, jobs)
            outcomes.update({job.position: job.outcome(slot, applied) for job in jobs})
        else:
            jobs[0].recorder.close()  # prepared for nothing: it runs alone below
    for position, item, _, _ in members:
        if position not in outcomes:
            outcomes[position] = alone(item)
    return outcomes


def denoise(family: BatchFamily, pipe: Any, jobs: list[BatchJob]) -> None:
    """Run the shared loop and decode; every job ends with ``images`` or ``error`` (nothing raised)."""
    active = list(jobs)
    try:
        with torch.no_grad():
            _loop(family, pipe, active)
            for job in list(active):
                active.remove(job)
                _decode(family, pipe, job, job.latents)
    except Exception as exc:  # the shared part failed: every job still in the loop fails with it
        log.exception("batched generation failed")
        for job in active:
            job.finish(error=failure(exc))
    finally:
        for job in jobs:  # nothing keeps the tensors of a finished batch
            job.recorder.close()
            job.step_kwargs.clear()
            job.inputs.clear()


def _loop(family: BatchFamily, pipe: Any, active: list[BatchJob]) -> None:
    """The pipeline's denoising loop over several jobs; ``active`` shrinks as jobs leave."""
    timesteps = active[0].scheduler.timesteps
    # StepCallback reads the step count where diffusers keeps it, on the pipeline (``_num_timesteps``).
    progress = SimpleNamespace(_num_timesteps=len(timesteps))
    for i, t in enumerate(timesteps):
        predictions = family.predict(pipe, active, i, t)
        for job, prediction in zip(active, predictions, strict=True):
            step = job.scheduler.step(prediction, job.scheduler.timesteps[i], job.latents, **job.step_kwargs,
                                      return_dict=False)
            job.latents = step[0]
        del predictions
        for job in [job for job in active if not _report(family, pipe, job, progress, i, t)]:
            active.remove(job)  # the others go on, a smaller batch
        if not active:
            return
    for job in active:
        job.steps_run = job.callback.steps_done  # the user's steps (PLMS's warm-up call is none)


def _report(family: BatchFamily, pipe: Any, job: BatchJob, progress: Any, index: int, t: Any) -> bool:
    """Run the job's step callback; False when the job leaves the loop (finished one way or another)."""
    try:
        job.callback(progress, index, t, {"latents": job.latents})
    except Interrupted as stop:  # A1111's interrupt: finish this one with the latents it has
        job.steps_run = stop.steps_done
        _decode(family, pipe, job, stop.latents)
    except JobCancelled as exc:
        job.finish(error=exc)
    except Exception as exc:  # its hook failed: that job fails, as it would alone; the others go on
        log.exception("step hook failed in a batched job")
        job.finish(error=failure(exc))
    else:
        return True
    return False


def _decode(family: BatchFamily, pipe: Any, job: BatchJob, latents: torch.Tensor) -> None:
    """Decode one job's latents (one job at a time: the same VAE batch as its solo run, and a peak
    memory of one job's decode, not the whole batch's)."""
    try:
        images = family.decode(pipe, job, latents)
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

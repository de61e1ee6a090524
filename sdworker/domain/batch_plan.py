"""Which jobs may share one UNet call per step (cross-job batching), torch-free.

Jobs share a call when every row of the batch runs the same network at the same timestep with the same
latent shape: the same model, width and height, step count and scheduler (so the same timesteps), and
the same UNet weights (no LoRA: adapters are switched per job for the whole UNet). What stays per job -
prompt, negative prompt, seed, guidance scale, number of images - lives in that job's own rows.

What runs alone (through ``generate``), and why:

- image-to-image and inpainting: their timesteps depend on ``strength`` and the inpainting UNet takes
  extra input channels; batching them is possible but not done yet;
- a job with a LoRA (``loras`` or a ``<lora:...>`` tag): the adapters apply to every row of a call;
Whether a job runs a classifier-free guidance pass (``guidance_scale`` > 1) is part of the key: the
UNet call lays its rows out as ``[uncond...; cond...]`` for every job, so an SD job without CFG runs
alone (the engine's ``batch_unet`` says so); the flow families' calls take each job's own rows.

SD 1.x, SD 2.x (v-prediction too: the schedulers handle it) and SDXL batch alike; of the flow families,
those whose facts say ``batching`` (``engine/batch_flow.py`` holds their hooks).

The engine adds the one condition that needs the loaded model: the prompt embeddings must have the same
sequence length (a long or weighted prompt encoded A1111's way is 77 x chunks tokens).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sdworker.domain.prompt_syntax import extract_lora_tags
from sdworker.domain.request import GenerationRequest, Operation
from sdworker.domain.scheduler_names import get_spec
from sdworker.errors import SdworkerError

# --max-batch unset: how many jobs share a UNet call on a CUDA device. 1 elsewhere: a CPU is already
# busy at batch 1 (bench/engine.py), and more rows only delay every job of the batch.
CUDA_AUTO_BATCH = 4


def resolve_max_batch(max_batch: int | None, device: str) -> int:
    """``--max-batch`` as given, or when unset ``CUDA_AUTO_BATCH`` on a CUDA device and 1 elsewhere.
    One rule for the runner (how many jobs it claims together) and ``--compile`` (which batch sizes it
    compiles), so the two agree."""
    if max_batch is not None:
        return max_batch
    return CUDA_AUTO_BATCH if device.startswith("cuda") else 1


@dataclass(frozen=True, slots=True)
class BatchKey:
    """Jobs with equal keys can share a UNet call (given prompt embeddings of one length)."""

    model: str | None  # the library name; None = the default model (before the engine resolves it)
    width: int
    height: int
    num_inference_steps: int
    scheduler: str | None  # our canonical name; None = the model's own
    clip_skip: int | None
    guided: bool  # guidance_scale > 1: a classifier-free guidance pass for the UNet families


def batch_key(request: GenerationRequest, model: str | None = None) -> BatchKey | None:
    """The key of a job that can batch, or None when it must run alone (see the module docstring).

    ``model`` is the name the engine resolved; without it the request's own model name is used. A
    request with a mistake (unknown scheduler, bad LoRA tag) gets None: it runs alone, and ``generate``
    reports the mistake as it always does.
    """
    if request.num_inference_steps is None or request.guidance_scale is None:
        return None  # not settled: runs alone, and generate settles it
    if request.operation is not Operation.TEXT_TO_IMAGE:
        return None
    if request.loras or request.width is None or request.height is None or request.hires is not None:
        return None  # a hires fix has a second pass the shared loop does not run
    if request.controlnet or request.cache is not None or request.ip_adapter is not None:
        return None  # the shared loop calls the plain UNet (and no family that batches takes a cache)
    try:
        _, tags = extract_lora_tags(request.prompt)
        scheduler = None if request.scheduler is None else get_spec(request.scheduler).name
    except SdworkerError:
        return None
    if tags:
        return None
    return BatchKey(
        model=model if model is not None else request.model,
        width=request.width,
        height=request.height,
        num_inference_steps=request.num_inference_steps,
        scheduler=scheduler,
        clip_skip=request.clip_skip,
        guided=request.guidance_scale > 1,
    )


def can_share_unet(a: GenerationRequest, b: GenerationRequest) -> bool:
    """Whether two requests could share one UNet call per step, judged from the requests alone (a
    runner picking jobs to batch). The engine still splits them when their prompts encode to different
    lengths, and compares models after resolving names (None and the default's name are one model)."""
    key = batch_key(a)
    return key is not None and key == batch_key(b)


def group_positions(keys: Sequence[BatchKey | None]) -> list[list[int]]:
    """Positions grouped by key, groups ordered by their first position; a None key is a group of one."""
    groups: list[list[int]] = []
    by_key: dict[BatchKey, list[int]] = {}
    for position, key in enumerate(keys):
        if key is None:
            groups.append([position])
        elif key in by_key:
            by_key[key].append(position)
        else:
            by_key[key] = [position]
            groups.append(by_key[key])
    return groups

"""Cross-job batching: jobs sharing one UNet call per step get their solo pixels, hooks and cancels."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from sdworker.domain.batch_plan import batch_key, can_share_unet, group_positions
from sdworker.domain.control import CancelToken
from sdworker.domain.request import GenerationRequest, LoraRef, Operation
from sdworker.domain.result import GenerationResult
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.engine.protocol import BatchItem, StepView
from sdworker.errors import GenerationFailed, JobCancelled, UnknownScheduler
from sdworker.previews.options import PreviewPixels
from sdworker.settings import Settings

from .helpers import pixels

STEPS = 4
SMALL: dict[str, Any] = {"num_inference_steps": STEPS, "width": 64, "height": 64, "scheduler": "euler"}
MIN_PSNR_DB = 40.0


def three_jobs(**overrides: Any) -> list[GenerationRequest]:
    """Different prompts (one weighted: the A1111 encoder path), negative prompts, seeds and guidance."""
    base = {**SMALL, **overrides}
    return [
        GenerationRequest("a photo of a cat", seed=1, guidance_scale=7.5, **base),
        GenerationRequest("a (red:1.3) house", negative_prompt="blurry", seed=50, guidance_scale=3.0, **base),
        GenerationRequest("a dog on a beach", seed=999, guidance_scale=12.0, **base),
    ]


def psnr(a: Image.Image, b: Image.Image) -> float:
    error = np.mean((pixels(a).astype(np.float64) - pixels(b).astype(np.float64)) ** 2)
    return float("inf") if error == 0 else float(10 * np.log10(255.0**2 / error))


def assert_solo_pixels(engine: DiffusersEngine, request: GenerationRequest, result: Any) -> None:
    assert isinstance(result, GenerationResult), result
    solo = engine.generate(request)
    assert len(result.images) == len(solo.images) == request.num_images
    for batched, alone in zip(result.images, solo.images, strict=True):
        assert psnr(batched, alone) >= MIN_PSNR_DB
    assert result.seeds == solo.seeds
    assert (result.scheduler, result.steps_run, result.model, result.family) == (
        solo.scheduler, solo.steps_run, solo.model, solo.family
    )
    assert (result.loras, result.clip_skip, result.width, result.height) == ((), request.clip_skip, 64, 64)


@contextmanager
def counting_rows(unet: Any) -> Iterator[list[int]]:
    """The batch size of every call of ``unet`` while inside (a forward pre-hook, removed after)."""
    rows: list[int] = []

    def count(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        rows.append(int((args[0] if args else kwargs["sample"]).shape[0]))

    handle = unet.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield rows
    finally:
        handle.remove()


@pytest.fixture
def unet_rows(demo_engine: DiffusersEngine) -> Iterator[list[int]]:
    """The batch size of every UNet call of the default model while the test runs."""
    with counting_rows(demo_engine.model.text_to_image.unet) as rows:
        yield rows


def test_three_jobs_share_one_unet_call_per_step_and_keep_their_solo_pixels(
    demo_engine: DiffusersEngine, unet_rows: list[int]
) -> None:
    requests = three_jobs()
    outcomes = demo_engine.generate_batch([BatchItem(r) for r in requests])
    assert unet_rows == [6] * STEPS  # 3 jobs x (uncond + cond), one call per step
    for request, outcome in zip(requests, outcomes, strict=True):
        assert_solo_pixels(demo_engine, request, outcome)


@pytest.mark.parametrize("scheduler", ["euler_a", "dpmpp_2m_sde"])
def test_ancestral_and_sde_jobs_draw_step_noise_from_their_own_generators(
    demo_engine: DiffusersEngine, scheduler: str
) -> None:
    requests = three_jobs(scheduler=scheduler)
    requests[1] = replace(requests[1], num_images=2)  # a list of generators, one per image
    outcomes = demo_engine.generate_batch([BatchItem(r) for r in requests])
    for request, outcome in zip(requests, outcomes, strict=True):
        assert_solo_pixels(demo_engine, request, outcome)


@pytest.mark.parametrize("scheduler", ["euler", "euler_a"])
def test_sdxl_jobs_share_a_unet_call_with_their_pooled_embeddings_and_size_conditioning(
    demo_engine: DiffusersEngine, scheduler: str
) -> None:
    requests = three_jobs(model="demo-sdxl", scheduler=scheduler)
    requests[2] = replace(requests[2], num_images=2)
    try:
        demo_engine.generate(requests[0])  # loads the SDXL model, to count its UNet's calls
        with counting_rows(demo_engine.model.text_to_image.unet) as unet_rows:
            outcomes = demo_engine.generate_batch([BatchItem(r) for r in requests])
        assert unet_rows == [8] * STEPS
        for request, outcome in zip(requests, outcomes, strict=True):
            assert_solo_pixels(demo_engine, request, outcome)
            assert outcome.family == "sdxl"  # type: ignore[union-attr]
    finally:
        demo_engine.generate(GenerationRequest("back to the default", **SMALL))  # the next tests' model


def test_a_cancelled_job_leaves_the_batch_and_the_others_finish(
    demo_engine: DiffusersEngine, unet_rows: list[int]
) -> None:
    requests = three_jobs()
    token = CancelToken()

    def cancel_at_step_two(view: StepView) -> None:
        if view.step == 2:
            token.cancel()

    items = [BatchItem(requests[0]), BatchItem(requests[1], cancel_at_step_two, token), BatchItem(requests[2])]
    outcomes = demo_engine.generate_batch(items)
    assert isinstance(outcomes[1], JobCancelled)
    assert unet_rows == [6, 6, 4, 4]  # the cancelled job's rows left after its step 2
    assert_solo_pixels(demo_engine, requests[0], outcomes[0])
    assert_solo_pixels(demo_engine, requests[2], outcomes[2])


def test_each_job_hears_its_own_steps_and_can_ask_for_a_preview(demo_engine: DiffusersEngine) -> None:
    requests = three_jobs()
    requests[2] = replace(requests[2], num_images=2)
    seen: dict[int, list[tuple[int, int, int]]] = {0: [], 1: [], 2: []}
    previews: list[Any] = []

    def hook_for(index: int) -> Any:
        def hook(view: StepView) -> None:
            seen[index].append((view.step, view.total, int(view.latents().shape[0])))
            if index == 1 and view.step == 2:
                previews.append(view.render_preview("latent2rgb", 64))

        return hook

    outcomes = demo_engine.generate_batch([BatchItem(r, hook_for(i)) for i, r in enumerate(requests)])
    assert all(isinstance(o, GenerationResult) for o in outcomes)
    for index, request in enumerate(requests):
        assert seen[index] == [(step, STEPS, request.num_images) for step in range(1, STEPS + 1)]
    assert len(previews) == 1 and isinstance(previews[0], PreviewPixels)
    assert previews[0].source == "x0" and previews[0].pixels.ndim == 3 and previews[0].pixels.dtype == np.uint8


def test_an_interrupted_job_finishes_from_its_latents_like_generate(demo_engine: DiffusersEngine) -> None:
    requests = three_jobs()

    def interrupt_at_step_two() -> tuple[Any, CancelToken]:
        token = CancelToken()

        def hook(view: StepView) -> None:
            if view.step == 2:
                token.interrupt()

        return hook, token

    hook, token = interrupt_at_step_two()
    outcomes = demo_engine.generate_batch(
        [BatchItem(requests[0]), BatchItem(requests[1], hook, token), BatchItem(requests[2])]
    )
    interrupted = outcomes[1]
    assert isinstance(interrupted, GenerationResult) and interrupted.steps_run == 2
    solo = demo_engine.generate(requests[1], *interrupt_at_step_two())
    assert solo.steps_run == 2 and psnr(interrupted.images[0], solo.images[0]) >= MIN_PSNR_DB
    assert_solo_pixels(demo_engine, requests[2], outcomes[2])


def test_jobs_that_cannot_share_run_alone_in_order(demo_engine: DiffusersEngine, unet_rows: list[int]) -> None:
    cat, house, dog = three_jobs()
    requests = [
        cat,
        replace(house, width=72),  # another size
        replace(dog, loras=(LoraRef("demo-peft", 0.5),)),  # a LoRA
        replace(dog, prompt="a dog on a beach, " * 20),  # a long prompt: 154 tokens, not 77
        replace(cat, scheduler="no-such-sampler"),  # a mistake: its own outcome
        replace(house, seed=3),  # shares with the first
    ]
    outcomes = demo_engine.generate_batch([BatchItem(r) for r in requests])
    assert isinstance(outcomes[4], UnknownScheduler)
    assert unet_rows == [4] * STEPS + [2] * STEPS * 3  # the group first, then the others one by one
    assert isinstance(outcomes[2], GenerationResult) and [lora.name for lora in outcomes[2].loras] == ["demo-peft"]
    assert isinstance(outcomes[1], GenerationResult) and outcomes[1].width == 72
    for position in (0, 5):
        assert_solo_pixels(demo_engine, requests[position], outcomes[position])


def test_a_failure_in_the_shared_loop_fails_every_job_without_raising(demo_engine: DiffusersEngine) -> None:
    unet = demo_engine.model.text_to_image.unet

    def broken(module: Any, args: tuple[Any, ...]) -> None:
        raise RuntimeError("device lost")

    handle = unet.register_forward_pre_hook(broken)
    try:
        outcomes = demo_engine.generate_batch([BatchItem(r) for r in three_jobs()])
    finally:
        handle.remove()
    assert all(isinstance(o, GenerationFailed) and "RuntimeError" in str(o) for o in outcomes)


def test_which_requests_can_share_a_unet_call() -> None:
    cat = GenerationRequest("a cat", **{"guidance_scale": 7.5, **SMALL})  # settled, as a job's request is
    different_job = replace(cat, prompt="a dog", negative_prompt="x", seed=4, guidance_scale=3, num_images=2)
    assert can_share_unet(cat, different_job)
    assert can_share_unet(cat, replace(cat, scheduler="Euler"))  # one name, two spellings
    for other in (
        replace(cat, width=128),
        replace(cat, num_inference_steps=5),
        replace(cat, scheduler="euler_a"),
        replace(cat, clip_skip=2),
        replace(cat, model="another"),
        replace(cat, loras=(LoraRef("x"),)),
        replace(cat, prompt="a cat <lora:x:0.5>"),
        replace(cat, guidance_scale=1.0),
        replace(cat, operation=Operation.IMAGE_TO_IMAGE),
    ):
        assert not can_share_unet(cat, other), other
    keys = [batch_key(cat), None, batch_key(replace(cat, width=128)), batch_key(cat)]
    assert group_positions(keys) == [[0, 3], [1], [2]]


def test_long_prompts_batch_with_prompts_of_their_own_length(
    demo_engine: DiffusersEngine, unet_rows: list[int]
) -> None:
    cat, house, dog = three_jobs()
    long_dog = replace(dog, prompt="a dog on a beach, " * 20)  # 120 tokens: two chunks, 154 tokens
    long_house = replace(house, prompt="a (red:1.2) house, " * 20)
    requests = [long_dog, cat, long_house]
    outcomes = demo_engine.generate_batch([BatchItem(r) for r in requests])
    assert unet_rows == [4] * STEPS + [2] * STEPS  # the two long ones together; the short one alone
    for request, outcome in zip(requests, outcomes, strict=True):
        assert_solo_pixels(demo_engine, request, outcome)


def test_a_v_prediction_model_batches_like_its_solo_runs(demo_model_dir: Path) -> None:
    """SD 2.x's v-models: the schedulers read ``prediction_type``; the shared loop needs nothing more."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(demo_model_dir, safety_checker=None)
    pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type="v_prediction")
    engine = DiffusersEngine.from_pipeline(pipe, Settings(device="cpu"), model_name="demo-v")
    requests = three_jobs(scheduler="dpmpp_2m")
    outcomes = engine.generate_batch([BatchItem(r) for r in requests])
    for request, outcome in zip(requests, outcomes, strict=True):
        assert_solo_pixels(engine, request, outcome)
        assert outcome.model == "demo-v"  # type: ignore[union-attr]


def test_a_failing_hook_or_an_early_cancel_ends_only_that_job(demo_engine: DiffusersEngine) -> None:
    requests = three_jobs()
    early = CancelToken()
    early.cancel()

    def broken(view: StepView) -> None:
        raise KeyError("a watcher's bug")

    outcomes = demo_engine.generate_batch(
        [BatchItem(requests[0], broken), BatchItem(requests[1], cancel=early), BatchItem(requests[2])]
    )
    assert isinstance(outcomes[0], GenerationFailed) and "KeyError" in str(outcomes[0])
    assert isinstance(outcomes[1], JobCancelled)
    assert_solo_pixels(demo_engine, requests[2], outcomes[2])

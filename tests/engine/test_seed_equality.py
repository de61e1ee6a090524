"""With seed S the engine's images equal diffusers' own pipelines called with
``generator=torch.Generator("cpu").manual_seed(S)``, pixel for pixel, for each operation and scheduler."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    LMSDiscreteScheduler,
    PNDMScheduler,
    UniPCMultistepScheduler,
)

from sdworker.domain.request import GenerationRequest, Operation
from sdworker.engine.diffusers_engine import DiffusersEngine

from .helpers import as_init, as_mask, half_mask, init_image, pixels

# Written out here, independently of sdworker.engine.schedulers: what each name must mean in diffusers.
REFERENCE_SCHEDULERS: dict[str, tuple[Any, dict[str, Any]]] = {
    "euler": (EulerDiscreteScheduler, {}),
    "euler_a": (EulerAncestralDiscreteScheduler, {}),
    "heun": (HeunDiscreteScheduler, {}),
    "ddim": (DDIMScheduler, {}),
    "dpmpp_2m": (DPMSolverMultistepScheduler, {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "dpmpp_2m_karras": (
        DPMSolverMultistepScheduler,
        {"algorithm_type": "dpmsolver++", "solver_order": 2, "use_karras_sigmas": True},
    ),
    "dpmpp_2m_sde": (DPMSolverMultistepScheduler, {"algorithm_type": "sde-dpmsolver++", "solver_order": 2}),
    "lms": (LMSDiscreteScheduler, {}),
    "pndm": (PNDMScheduler, {}),
    "unipc": (UniPCMultistepScheduler, {}),
}
PROMPT = "a photo of a cat"
SEED = 1234


def reference(pipe: Any, scheduler: str | None, **kwargs: Any) -> list[np.ndarray]:
    original = pipe.scheduler
    if scheduler is not None:
        cls, overrides = REFERENCE_SCHEDULERS[scheduler]
        pipe.scheduler = cls.from_config(original.config, **overrides)
    try:
        out = pipe(generator=torch.Generator("cpu").manual_seed(SEED), **kwargs)
    finally:
        pipe.scheduler = original
    return [pixels(image) for image in out.images]


@pytest.mark.parametrize("scheduler", [None, *REFERENCE_SCHEDULERS])
def test_text_to_image_equals_diffusers(
    demo_engine: DiffusersEngine, reference_pipelines: dict[str, Any], scheduler: str | None
) -> None:
    result = demo_engine.generate(
        GenerationRequest(PROMPT, negative_prompt="blurry", num_inference_steps=3, width=64, height=64,
                          seed=SEED, scheduler=scheduler)
    )
    expected = reference(reference_pipelines["txt2img"], scheduler, prompt=PROMPT, negative_prompt="blurry",
                         num_inference_steps=3, width=64, height=64)
    assert result.seeds == (SEED,)
    assert result.scheduler == (scheduler or "pndm")  # the demo ships PNDM, like SD 1.5
    assert np.array_equal(pixels(result.images[0]), expected[0])


@pytest.mark.parametrize("scheduler", ["euler_a", "dpmpp_2m", "ddim", None])
def test_image_to_image_equals_diffusers(
    demo_engine: DiffusersEngine, reference_pipelines: dict[str, Any], scheduler: str | None
) -> None:
    image = init_image()
    seen: list[tuple[int, int]] = []
    result = demo_engine.generate(
        GenerationRequest(PROMPT, operation=Operation.IMAGE_TO_IMAGE, num_inference_steps=4, width=64, height=64,
                          seed=SEED, scheduler=scheduler, init_image=as_init(image), strength=0.75),
        on_step=lambda view: seen.append((view.step, view.total)),
    )
    expected = reference(reference_pipelines["img2img"], scheduler, prompt=PROMPT, image=image,
                         num_inference_steps=4, strength=0.75)
    # int(4 * 0.75) = 3 steps for every scheduler: PNDM's PLMS makes one more UNet call (its warm-up repeats
    # a timestep), which is no step of the user's (issue #20).
    assert result.steps_run == 3
    assert seen == [(i, result.steps_run) for i in range(1, result.steps_run + 1)]
    assert np.array_equal(pixels(result.images[0]), expected[0])


@pytest.mark.parametrize("scheduler", ["euler_a", "dpmpp_2m", "ddim", None])
def test_inpaint_equals_diffusers(
    demo_engine: DiffusersEngine, reference_pipelines: dict[str, Any], scheduler: str | None
) -> None:
    image, mask = init_image(), half_mask()
    result = demo_engine.generate(
        GenerationRequest(PROMPT, operation=Operation.INPAINT, num_inference_steps=3, width=64, height=64,
                          seed=SEED, scheduler=scheduler, init_image=as_init(image), mask_image=as_mask(mask),
                          strength=1.0)
    )
    expected = reference(reference_pipelines["inpaint"], scheduler, prompt=PROMPT, image=image, mask_image=mask,
                         num_inference_steps=3, width=64, height=64, strength=1.0)
    assert np.array_equal(pixels(result.images[0]), expected[0])


def test_init_image_of_another_size_is_resized_to_the_request(demo_engine: DiffusersEngine) -> None:
    result = demo_engine.generate(
        GenerationRequest(PROMPT, operation=Operation.IMAGE_TO_IMAGE, num_inference_steps=2, width=64, height=48,
                          seed=SEED, init_image=as_init(init_image(96)), strength=0.5)
    )
    assert result.images[0].size == (64, 48)


def test_several_images_use_seed_plus_index(
    demo_engine: DiffusersEngine, reference_pipelines: dict[str, Any]
) -> None:
    request = GenerationRequest(PROMPT, num_inference_steps=2, width=64, height=64, seed=SEED, num_images=2,
                                scheduler="euler_a")
    batch = demo_engine.generate(request)
    assert batch.seeds == (SEED, SEED + 1)
    pipe = reference_pipelines["txt2img"]
    original = pipe.scheduler
    pipe.scheduler = EulerAncestralDiscreteScheduler.from_config(original.config)
    try:
        expected = pipe(PROMPT, num_inference_steps=2, width=64, height=64, num_images_per_prompt=2,
                        generator=[torch.Generator("cpu").manual_seed(SEED + i) for i in range(2)]).images
    finally:
        pipe.scheduler = original
    assert [pixels(image).tolist() for image in batch.images] == [pixels(image).tolist() for image in expected]
    alone = demo_engine.generate(GenerationRequest(PROMPT, num_inference_steps=2, width=64, height=64,
                                                   seed=SEED + 1, scheduler="euler_a"))
    # Same seed, same noise, same denoising; but a batch of 4 (2 images x guidance) runs other CPU kernels
    # than a batch of 2, which round differently in the last float bits: at most one level of 255.
    difference = np.abs(pixels(batch.images[1]).astype(int) - pixels(alone.images[0]))
    assert difference.max() <= 1


def test_no_seed_picks_one_reports_it_and_it_reproduces(demo_engine: DiffusersEngine) -> None:
    first = demo_engine.generate(GenerationRequest(PROMPT, num_inference_steps=2, width=64, height=64))
    assert 0 <= first.seed < 2**32
    again = demo_engine.generate(GenerationRequest(PROMPT, num_inference_steps=2, width=64, height=64,
                                                   seed=first.seed))
    assert np.array_equal(pixels(first.images[0]), pixels(again.images[0]))

"""Predicted x0: our formula agrees with the schedulers' own ``pred_original_sample``, and every
scheduler we offer yields an x0."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    LMSDiscreteScheduler,
    UniPCMultistepScheduler,
)

from sdworker.domain.request import GenerationRequest
from sdworker.domain.scheduler_names import SCHEDULER_NAMES
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.engine.protocol import StepView
from sdworker.engine.x0 import X0Recorder, alpha_x0


def run_recording(pipe: Any, scheduler: Any, check: Any) -> int:
    """Run diffusers' own pipeline with ``scheduler`` wrapped by X0Recorder; ``check(recorder)`` each step."""
    original = pipe.scheduler
    pipe.scheduler = scheduler
    recorder = X0Recorder(scheduler)
    steps = 0

    def callback(p: Any, i: int, t: Any, tensors: dict[str, Any]) -> dict[str, Any]:
        nonlocal steps
        steps += 1
        check(recorder)
        return tensors

    try:
        pipe("a cat", num_inference_steps=4, width=64, height=64, output_type="latent",
             generator=torch.Generator("cpu").manual_seed(3), callback_on_step_end=callback)
    finally:
        recorder.close()
        pipe.scheduler = original
    assert "step" not in vars(scheduler)  # unwrapped
    return steps


@pytest.mark.parametrize("cls", [EulerDiscreteScheduler, DDIMScheduler, LMSDiscreteScheduler])
def test_formula_equals_the_schedulers_own_prediction(reference_pipelines: dict[str, Any], cls: Any) -> None:
    pipe = reference_pipelines["txt2img"]

    def check(recorder: X0Recorder) -> None:
        own = recorder.last.pred_original_sample if recorder.last else None
        assert own is not None
        ours = recorder.formula_x0()
        assert ours is not None
        assert torch.allclose(ours, own, rtol=1e-5, atol=1e-5)
        assert recorder.predicted_x0() is own

    assert run_recording(pipe, cls.from_config(pipe.scheduler.config), check) == 4


@pytest.mark.parametrize(
    "scheduler",
    [
        lambda config: DPMSolverMultistepScheduler.from_config(config, algorithm_type="dpmsolver++"),
        lambda config: UniPCMultistepScheduler.from_config(config),
    ],
)
def test_solvers_converted_output_is_the_x0_of_the_noise_prediction(
    reference_pipelines: dict[str, Any], scheduler: Any
) -> None:
    """DPM-Solver++ and UniPC store x0 themselves; it equals the alphas_cumprod formula at that timestep."""
    pipe = reference_pipelines["txt2img"]

    def check(recorder: X0Recorder) -> None:
        last = recorder.last
        assert last is not None and last.converted_output is not None
        t = int(last.timestep)
        expected = alpha_x0(recorder.scheduler.alphas_cumprod[t], last.sample, last.model_output, "epsilon")
        assert torch.allclose(recorder.predicted_x0(), expected, rtol=1e-4, atol=1e-4)

    run_recording(pipe, scheduler(pipe.scheduler.config), check)


@pytest.mark.parametrize("name", SCHEDULER_NAMES)
def test_every_scheduler_gives_an_x0(demo_engine: DiffusersEngine, name: str) -> None:
    found: list[bool] = []

    def hook(view: StepView) -> None:
        x0 = view.predicted_x0()
        found.append(x0 is not None and tuple(x0.shape) == tuple(view.latents().shape) and bool(x0.isfinite().all()))

    demo_engine.generate(GenerationRequest("a cat", num_inference_steps=2, width=64, height=64, seed=1,
                                           scheduler=name), on_step=hook)
    assert found and all(found)

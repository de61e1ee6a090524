"""On CUDA (skipped without it): auto picks CUDA with float16, and seeds still match diffusers there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sdworker.domain.control import CancelToken
from sdworker.domain.request import GenerationRequest
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.engine.protocol import StepView
from sdworker.errors import JobCancelled
from sdworker.settings import Settings

from .helpers import pixels

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_auto_device_is_cuda_fp16_and_seeds_match_diffusers_there(demo_cache_dir: Path, demo_model_dir: Path) -> None:
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionPipeline

    engine = DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir))
    engine.load()
    assert engine.info.device.startswith("cuda") and engine.info.dtype == "float16"
    previews: list[object] = []
    result = engine.generate(
        GenerationRequest("a cat", num_inference_steps=3, width=64, height=64, seed=11, scheduler="euler_a"),
        on_step=lambda view: previews.append(view.render_preview("auto", 64)),
    )
    assert all(p is not None for p in previews)
    ref = StableDiffusionPipeline.from_pretrained(demo_model_dir, safety_checker=None, dtype=torch.float16).to("cuda")
    ref.scheduler = EulerAncestralDiscreteScheduler.from_config(ref.scheduler.config)
    expected = ref("a cat", num_inference_steps=3, width=64, height=64,
                   generator=torch.Generator("cpu").manual_seed(11)).images[0]
    # Same kernels on the same inputs; allow one level for nondeterministic GPU reductions.
    assert np.abs(pixels(result.images[0]).astype(int) - pixels(expected)).max() <= 1

    token = CancelToken()

    def cancel_at_two(view: StepView) -> None:
        if view.step == 2:
            token.cancel()

    with pytest.raises(JobCancelled):
        engine.generate(GenerationRequest("a cat", num_inference_steps=4, width=64, height=64, seed=1,
                                          scheduler="euler"), on_step=cancel_at_two, cancel=token)
    engine.close()

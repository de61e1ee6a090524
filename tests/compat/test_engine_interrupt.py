"""A1111's interrupt at the engine: the job stops at the next step and finishes with an image decoded
from what it has (not ``JobCancelled``); a cancel still raises."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdworker.domain.control import CancelToken
from sdworker.domain.request import GenerationRequest
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.engine.fake import FakeEngine
from sdworker.engine.protocol import Engine, StepView
from sdworker.errors import JobCancelled
from sdworker.settings import Settings

REQUEST = GenerationRequest(prompt="a cat", num_inference_steps=4, width=64, height=64, seed=3, scheduler="euler")


@pytest.fixture(scope="module")
def engine(demo_cache_dir: Path) -> DiffusersEngine:
    engine = DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu"))
    engine.load()
    return engine


def _stop_at(step: int, token: CancelToken, *, interrupt: bool) -> tuple[list[int], object]:
    seen: list[int] = []

    def hook(view: StepView) -> None:
        seen.append(view.step)
        if view.step == step:
            token.interrupt() if interrupt else token.cancel()

    return seen, hook


@pytest.mark.parametrize("kind", ["diffusers", "fake"])
def test_interrupt_finishes_with_an_image_at_the_next_step(kind: str, engine: DiffusersEngine) -> None:
    target: Engine = engine if kind == "diffusers" else FakeEngine()
    if isinstance(target, FakeEngine):
        target.load()
    token = CancelToken()
    seen, hook = _stop_at(2, token, interrupt=True)
    result = target.generate(REQUEST, on_step=hook, cancel=token)  # type: ignore[arg-type]
    assert seen == [1, 2] and result.steps_run == 2
    assert len(result.images) == 1 and result.images[0].size == (64, 64)
    full = target.generate(REQUEST)
    if kind == "diffusers":  # two steps of four: another picture than the finished one
        assert not np.array_equal(np.asarray(result.images[0]), np.asarray(full.images[0]))


def test_cancel_still_raises(engine: DiffusersEngine) -> None:
    token = CancelToken()
    seen, hook = _stop_at(1, token, interrupt=False)
    with pytest.raises(JobCancelled):
        engine.generate(REQUEST, on_step=hook, cancel=token)  # type: ignore[arg-type]
    assert seen == [1]

"""Cross-job batching of FLUX.1 text-to-image jobs (``engine.flow_batch``): jobs of one size and step
count share one transformer call per step, each with its own seed, guidance and scheduler; each job's
pixels stay within 40 dB PSNR of its solo ``generate`` (a wider matmul may round differently), and a job
cancelled mid-loop leaves while the others finish."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sdworker.domain.control import CancelToken
from sdworker.domain.request import GenerationRequest
from sdworker.domain.result import GenerationResult
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.engine.protocol import BatchItem
from sdworker.errors import JobCancelled
from sdworker.settings import Settings

from .helpers import pixels


@pytest.fixture(scope="module")
def engine(demo_cache_dir: Path) -> DiffusersEngine:
    return DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu"))


def _job(prompt: str, seed: int, guidance: float) -> GenerationRequest:
    return GenerationRequest(prompt, model="demo-flux1", seed=seed, width=64, height=64, num_inference_steps=3,
                             guidance_scale=guidance)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(float) - b.astype(float)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_batched_flux_jobs_match_their_solo_runs(engine: DiffusersEngine) -> None:
    requests = [_job("a photo of a cat", 1, 3.5), _job("a red barn at dusk", 2, 5.0), _job("a lighthouse", 3, 2.0)]
    calls: list[int] = []
    slot = engine._slot(engine.library.model("demo-flux1"), None)
    transformer = slot.model.text_to_image.transformer
    hook = transformer.register_forward_pre_hook(lambda _m, _a, kw: calls.append(kw["hidden_states"].shape[0]),
                                                 with_kwargs=True)
    try:
        batched = engine.generate_batch([BatchItem(r) for r in requests])
    finally:
        hook.remove()
    assert calls == [3, 3, 3]  # one call per step for the three jobs
    solo = [engine.generate(r) for r in requests]
    for got, alone in zip(batched, solo, strict=True):
        assert isinstance(got, GenerationResult)
        assert _psnr(pixels(got.images[0]), pixels(alone.images[0])) >= 40
        assert (got.steps_run, got.family, got.warnings) == (3, "flux1", ())
    assert not np.array_equal(pixels(batched[0].images[0]), pixels(batched[1].images[0]))  # type: ignore[union-attr]


def test_a_cancelled_job_leaves_and_the_others_finish(engine: DiffusersEngine) -> None:
    token = CancelToken()

    def cancel_after_first(view: Any) -> None:
        token.cancel()

    items = [BatchItem(_job("a cat", 4, 3.5), on_step=cancel_after_first, cancel=token),
             BatchItem(_job("a dog", 5, 3.5))]
    first, second = engine.generate_batch(items)
    assert isinstance(first, JobCancelled)
    assert isinstance(second, GenerationResult)
    alone = engine.generate(_job("a dog", 5, 3.5))
    assert _psnr(pixels(second.images[0]), pixels(alone.images[0])) >= 40

"""Cross-job batching of the flow-matching families (``engine.batch`` with ``engine.batch_flow``'s hooks):
jobs of one size and step count share one transformer call per step, each with its own seed, prompt,
guidance and scheduler; each job's pixels stay within 40 dB PSNR of its solo ``generate`` (a wider
matmul may round differently), and a job cancelled mid-loop leaves while the others finish."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
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

STEPS = 2
LONG = "a lighthouse on a cliff above a stormy sea at night, rain, lightning, waves, " * 2


@pytest.fixture(scope="module")
def engine(demo_cache_dir: Path) -> DiffusersEngine:
    return DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu"))


def _job(model: str, prompt: str, seed: int, guidance: float, **more: Any) -> GenerationRequest:
    return GenerationRequest(prompt, model=model, seed=seed, width=64, height=64, num_inference_steps=STEPS,
                             guidance_scale=guidance, **more)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(float) - b.astype(float)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


@contextmanager
def _rows(engine: DiffusersEngine, model: str) -> Iterator[list[int]]:
    """The rows of every transformer call of ``model`` while inside (Z-Image's takes a list of rows)."""
    rows: list[int] = []
    transformer = engine._slot(engine.library.model(model), None).model.text_to_image.transformer

    def count(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        first = args[0] if args else kwargs["hidden_states"]
        rows.append(len(first))

    handle = transformer.register_forward_pre_hook(count, with_kwargs=True)
    try:
        yield rows
    finally:
        handle.remove()


# Per family: the jobs of one generate_batch call and the rows of each step's calls (one call per group:
# jobs with and without CFG are keyed apart). Prompts of different lengths and negative prompts where the
# family takes them; CFG rows count twice.
CASES: dict[str, tuple[list[GenerationRequest], list[int]]] = {
    "flux1": ([_job("demo-flux1", "a photo of a cat", 1, 3.5), _job("demo-flux1", LONG, 2, 5.0),
               _job("demo-flux1", "a lighthouse", 3, 2.0)], [3]),
    "sd3": ([_job("demo-sd3", "a photo of a cat", 1, 4.5, negative_prompt="blurry"), _job("demo-sd3", LONG, 2, 7.0),
             _job("demo-sd3", "a red barn", 3, 1.0), _job("demo-sd3", "a dog", 4, 0.0)], [4, 2]),
    "zimage": ([_job("demo-zimage", "a photo of a cat", 1, 0.0), _job("demo-zimage", LONG, 2, 0.0),
                _job("demo-zimage", "a red barn", 3, 3.0, negative_prompt="blurry, dark"),
                _job("demo-zimage", LONG, 4, 5.0)], [2, 4]),
    "qwenimage": ([_job("demo-qwenimage", "a photo of a cat", 1, 4.0, negative_prompt="blurry"),
                   _job("demo-qwenimage", LONG, 2, 2.5), _job("demo-qwenimage", "a barn", 3, 3.0)], [6]),
    "flux2": ([_job("demo-flux2", "a photo of a cat", 1, 1.0), _job("demo-flux2", LONG, 2, 1.0),
               _job("demo-flux2", "a red barn", 3, 1.0)], [3]),
}


@pytest.mark.parametrize("family", list(CASES))
def test_batched_jobs_match_their_solo_runs(engine: DiffusersEngine, family: str) -> None:
    requests, rows_per_step = CASES[family]
    model = requests[0].model
    assert model is not None
    with _rows(engine, model) as rows:
        batched = engine.generate_batch([BatchItem(r) for r in requests])
    assert sorted(rows) == sorted(rows_per_step * STEPS), rows  # one call per group and step
    equal = 0
    for request, got in zip(requests, batched, strict=True):
        assert isinstance(got, GenerationResult), got
        alone = engine.generate(request)
        assert _psnr(pixels(got.images[0]), pixels(alone.images[0])) >= 40, request
        equal += np.array_equal(pixels(got.images[0]), pixels(alone.images[0]))
        assert (got.steps_run, got.family, got.warnings, got.seeds) == (STEPS, family, alone.warnings, alone.seeds)
    assert equal >= 1  # the same computation, not merely a close one: at least one job is pixel-equal
    first, second = batched[0], batched[1]
    assert isinstance(first, GenerationResult) and isinstance(second, GenerationResult)
    assert not np.array_equal(pixels(first.images[0]), pixels(second.images[0]))


def test_a_cancelled_job_leaves_and_the_others_finish(engine: DiffusersEngine) -> None:
    token = CancelToken()

    def cancel_after_first(view: Any) -> None:
        token.cancel()

    items = [BatchItem(_job("demo-flux1", "a cat", 4, 3.5), on_step=cancel_after_first, cancel=token),
             BatchItem(_job("demo-flux1", "a dog", 5, 3.5))]
    first, second = engine.generate_batch(items)
    assert isinstance(first, JobCancelled)
    assert isinstance(second, GenerationResult)
    alone = engine.generate(_job("demo-flux1", "a dog", 5, 3.5))
    assert _psnr(pixels(second.images[0]), pixels(alone.images[0])) >= 40


def test_flux1_schnell_jobs_batch_without_guidance() -> None:
    """A transformer without a guidance input (schnell) takes none in the shared call either."""
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from sdworker.engine.demo_flow import FLUX1_TRANSFORMER_CONFIG, build_demo_flux1_components

    parts = build_demo_flux1_components(77)
    torch.manual_seed(78)
    parts["transformer"] = FluxTransformer2DModel(**{**FLUX1_TRANSFORMER_CONFIG, "guidance_embeds": False}).eval()
    engine = DiffusersEngine.from_pipeline(FluxPipeline(**parts), Settings(device="cpu"), model_name="schnell",
                                           family="flux1")
    requests = [_job("schnell", "a photo of a cat", 1, 0.0), _job("schnell", LONG, 2, 0.0)]
    with _rows(engine, "schnell") as rows:
        batched = engine.generate_batch([BatchItem(r) for r in requests])
    assert rows == [2] * STEPS
    for request, got in zip(requests, batched, strict=True):
        assert isinstance(got, GenerationResult), got
        assert _psnr(pixels(got.images[0]), pixels(engine.generate(request).images[0])) >= 40

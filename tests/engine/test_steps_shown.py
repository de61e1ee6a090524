"""What a user sees counts the steps they asked for, not the denoising loop's UNet calls (issue #20).

PLMS (``pndm``, the demo's and SD 1.x's default) spends two calls on its first step, and Heun two on
every step but the last, so diffusers' loop runs more iterations than steps. The job's ``total``, each
reported ``step``, the result's ``steps_run``, the CLI's progress bar and the job's HTTP status all count
the asked steps: strictly increasing, ending at exactly ``total``.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import diffusers
import pytest

from sdworker.cli import main
from sdworker.domain.hires import HiresFix
from sdworker.domain.request import GenerationRequest, Operation
from sdworker.domain.scheduler_names import SCHEDULER_SPECS
from sdworker.engine.demo_model import SCHEDULER_CONFIG
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.engine.protocol import BatchItem, StepView
from sdworker.engine.step_hook import StepCallback
from sdworker.settings import Settings
from tests.api.helpers import parse_sse, running_app

from .helpers import as_init, init_image

SHAPE: dict[str, Any] = {"width": 64, "height": 64, "seed": 7}
SCHEDULERS = [spec.name for spec in SCHEDULER_SPECS]


def loop_report(scheduler_name: str, steps: int, strength: float | None = None) -> tuple[list[tuple[int, int]], int]:
    """Drive one ``StepCallback`` through a loop as a diffusers pipeline does, with the real scheduler and
    its timesteps cut as ``get_timesteps`` cuts them: the (step, total) it reports and its steps done."""
    spec = next(spec for spec in SCHEDULER_SPECS if spec.name == scheduler_name)
    scheduler = getattr(diffusers, spec.class_name).from_config(SCHEDULER_CONFIG, **spec.overrides)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    if strength is not None:
        start = max(steps - min(int(steps * strength), steps), 0)
        timesteps = timesteps[start * scheduler.order :]
    pipe = SimpleNamespace(_num_timesteps=len(timesteps), scheduler=scheduler)
    seen: list[tuple[int, int]] = []
    callback = StepCallback(lambda view: seen.append((view.step, view.total)), None, None, lambda *_: None)
    for index, t in enumerate(timesteps):
        callback(pipe, index, t, {"latents": None})
    return seen, callback.steps_done


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("steps", [1, 2, 4, 12])
def test_every_scheduler_reports_the_asked_steps(scheduler: str, steps: int) -> None:
    seen, done = loop_report(scheduler, steps)
    assert seen == [(step, steps) for step in range(1, steps + 1)]
    assert done == steps


@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize(("steps", "strength"), [(4, 0.75), (4, 0.5), (12, 0.6), (10, 1.0)])
def test_every_scheduler_reports_img2img_s_cut_steps(scheduler: str, steps: int, strength: float) -> None:
    cut = int(steps * strength)  # what Euler's loop runs, and every scheduler now shows
    seen, done = loop_report(scheduler, steps, strength)
    assert seen == [(step, cut) for step in range(1, cut + 1)]
    assert done == cut


@pytest.mark.parametrize("steps", [4, 12])
def test_pndm_text_to_image_shows_the_asked_steps(demo_engine: DiffusersEngine, steps: int) -> None:
    seen: list[tuple[int, int]] = []
    previews: list[bool] = []

    def hook(view: StepView) -> None:
        seen.append((view.step, view.total))
        if view.step < view.total:  # previews keyed by step still render (none on the last, as the runner does)
            previews.append(view.render_preview("latent2rgb", 64) is not None)

    result = demo_engine.generate(GenerationRequest("a cat", num_inference_steps=steps, scheduler="pndm", **SHAPE),
                                  on_step=hook)
    assert seen == [(step, steps) for step in range(1, steps + 1)]
    assert previews == [True] * (steps - 1)
    assert result.steps_run == steps


def test_the_demo_s_own_scheduler_is_pndm_and_shows_the_asked_steps(demo_engine: DiffusersEngine) -> None:
    seen: list[tuple[int, int]] = []
    result = demo_engine.generate(GenerationRequest("a cat", num_inference_steps=4, **SHAPE),
                                  on_step=lambda view: seen.append((view.step, view.total)))
    assert result.scheduler == "pndm"
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)] and result.steps_run == 4


@pytest.mark.parametrize("scheduler", ["euler", "heun"])
def test_other_schedulers_show_the_asked_steps(demo_engine: DiffusersEngine, scheduler: str) -> None:
    seen: list[tuple[int, int]] = []
    result = demo_engine.generate(GenerationRequest("a cat", num_inference_steps=4, scheduler=scheduler, **SHAPE),
                                  on_step=lambda view: seen.append((view.step, view.total)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)] and result.steps_run == 4


@pytest.mark.parametrize("scheduler", ["pndm", "euler"])
def test_pndm_image_to_image_shows_the_steps_euler_shows(demo_engine: DiffusersEngine, scheduler: str) -> None:
    seen: list[tuple[int, int]] = []
    result = demo_engine.generate(
        GenerationRequest("a cat", operation=Operation.IMAGE_TO_IMAGE, num_inference_steps=4, scheduler=scheduler,
                          init_image=as_init(init_image()), strength=0.75, **SHAPE),
        on_step=lambda view: seen.append((view.step, view.total)),
    )
    assert seen == [(1, 3), (2, 3), (3, 3)] and result.steps_run == 3  # int(4 x 0.75)


def test_pndm_hires_counts_the_asked_steps_of_both_passes(demo_engine: DiffusersEngine) -> None:
    seen: list[tuple[int, int, int]] = []
    request = GenerationRequest("a cat", num_inference_steps=4, scheduler="pndm",
                                hires=HiresFix(scale=2.0, strength=0.5), **SHAPE)
    result = demo_engine.generate(request, on_step=lambda view: seen.append((view.pass_number, view.step, view.total)))
    total = 4 + 2  # the second pass runs int(4 x 0.5)
    assert seen == [(1, s, total) for s in range(1, 5)] + [(2, s, total) for s in range(5, 7)]
    assert result.steps_run == total


def test_pndm_jobs_in_one_batch_loop_show_the_asked_steps(demo_engine: DiffusersEngine) -> None:
    seen: dict[int, list[tuple[int, int]]] = {0: [], 1: []}
    items = [
        BatchItem(GenerationRequest("a cat", num_inference_steps=4, scheduler="pndm", **{**SHAPE, "seed": 1 + i}),
                  on_step=lambda view, i=i: seen[i].append((view.step, view.total)))
        for i in range(2)
    ]
    results = demo_engine.generate_batch(items)
    for i, result in enumerate(results):
        assert not isinstance(result, Exception) and result.steps_run == 4
        assert seen[i] == [(1, 4), (2, 4), (3, 4), (4, 4)]


async def test_pndm_job_over_http_has_the_asked_total(demo_cache_dir: Path) -> None:
    settings = {"model": "demo", "cache_dir": demo_cache_dir, "device": "cpu"}
    engine = DiffusersEngine(Settings(**settings))
    async with running_app(engine, **settings) as app:  # type: ignore[arg-type]
        job = await app.submit(prompt="a cat", steps=4, width=64, height=64, scheduler="pndm")
        final = await app.wait_status(job, "completed", timeout=120.0)
        events = parse_sse((await app.client.get(f"/v1/jobs/{job}/stream")).text)
    assert (final["step"], final["total"]) == (4, 4)
    progress = [(data["step"], data["total"]) for _, kind, data in events if kind in ("progress", "preview")]
    assert progress == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_cli_progress_bar_shows_the_asked_steps(demo_cache_dir: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["generate", "a cat", "--model", "demo", "-o", str(tmp_path / "out.png"), "--steps", "4",
                 "--width", "64", "--height", "64", "--seed", "1", "--scheduler", "pndm",
                 "--cache-dir", str(demo_cache_dir), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 0
    assert "4/4" in err and "5/5" not in err and "/5 " not in err
    assert "4 steps with" in err


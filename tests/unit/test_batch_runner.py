"""Cross-job batching in the runner: which jobs it groups, and how long it waits for partners.

The wait is checked by event order under a clock the test moves by hand, never by a duration: the
runner holds its first job while the clock says the wait is not over (a partner that arrives then
joins), and starts it as soon as the clock passes ``--batch-wait-ms`` (a job that arrives later runs
in the next batch).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sdworker.domain.request import GenerationRequest
from sdworker.engine.fake import FakeEngine
from sdworker.events.types import JobCompleted, JobEvent, JobStarted, StepProgressed
from sdworker.jobs.memory import MemoryJobService
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.jobs.runner import JobRunner
from sdworker.jobs.spec import JobDraft
from sdworker.jobs.state import JobStatus
from sdworker.settings import Settings

GUARD_SECONDS = 30.0  # a hang guard only: the tests wait on events, never on time


class ManualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@asynccontextmanager
async def batching(
    engine: FakeEngine, *, max_batch: int, batch_wait_ms: int, clock: Callable[[], float]
) -> AsyncIterator[tuple[MemoryJobService, JobRunner, list[JobEvent]]]:
    settings = Settings(model="fake", preview_min_interval_ms=0)
    metrics = ServiceMetrics()
    service = MemoryJobService(settings, metrics)
    seen: list[JobEvent] = []  # every event of every job, in the order the bus took them
    publish = service.bus.publish

    def tap(event: JobEvent) -> Any:
        seen.append(event)
        return publish(event)

    service.bus.publish = tap  # type: ignore[method-assign]
    runner = JobRunner(engine, service, metrics,
                       max_batch=max_batch, batch_wait_ms=batch_wait_ms, clock=clock)
    await service.start()
    runner.start()
    try:
        yield service, runner, seen
    finally:
        await runner.stop(1.0)
        await runner.close()
        await service.close()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(GUARD_SECONDS):
        while not condition():
            await asyncio.sleep(0.002)


def index_of(seen: list[JobEvent], kind: type[JobEvent], job_id: str) -> int:
    return next(i for i, event in enumerate(seen) if isinstance(event, kind) and event.job_id == job_id)


def draft(prompt: str, **fields: Any) -> JobDraft:
    return JobDraft(GenerationRequest(prompt, **{"num_inference_steps": 2, "width": 64, "height": 64, **fields}))


async def test_the_runner_waits_for_partners_until_its_clock_says_the_wait_is_over() -> None:
    clock = ManualClock()
    engine = FakeEngine()
    async with batching(engine, max_batch=4, batch_wait_ms=1000, clock=clock) as (service, runner, seen):
        await until(lambda: runner.ready)
        first = await service.submit(draft("first"))
        # Claimed, then held: the clock has not moved, so the wait for partners is not over.
        await until(lambda: any(isinstance(e, JobStarted) and e.job_id == first.spec.job_id for e in seen))
        second = await service.submit(draft("second", seed=7))
        await until(lambda: any(isinstance(e, JobStarted) and e.job_id == second.spec.job_id for e in seen))
        assert engine.batches == [] and engine.generate_calls == 0  # nothing ran while the clock stood

        clock.now = 1.001  # past --batch-wait-ms: the two run now, together
        await service.wait(first.spec.job_id, timeout=GUARD_SECONDS)
        third = await service.submit(draft("third"))  # after the wait: a batch of its own
        await until(lambda: any(isinstance(e, JobStarted) and e.job_id == third.spec.job_id for e in seen))
        clock.now = 2.002  # its own wait ends
        await service.wait(third.spec.job_id, timeout=GUARD_SECONDS)

        assert engine.batches == [("first", "second")]  # the third ran alone, through generate
        assert engine.generate_calls == 3
        ids = [view.spec.job_id for view in (first, second, third)]
        for job_id in ids:
            assert (await service.get(job_id)).status is JobStatus.COMPLETED
        # The second job joined before the first took a step; the third was claimed after both had
        # taken their last step (their PNGs are encoded while the next job runs).
        assert index_of(seen, JobStarted, ids[1]) < index_of(seen, StepProgressed, ids[0])
        last_step = max(i for i, e in enumerate(seen) if isinstance(e, StepProgressed) and e.job_id in ids[:2])
        assert last_step < index_of(seen, JobStarted, ids[2])


async def test_with_no_wait_a_lone_job_starts_at_once_without_asking_the_clock() -> None:
    calls = 0

    def clock() -> float:
        nonlocal calls
        calls += 1
        return 0.0  # a clock that never moves: a runner that waited on it would hang

    engine = FakeEngine()
    async with batching(engine, max_batch=4, batch_wait_ms=0, clock=clock) as (service, runner, _):
        await until(lambda: runner.ready)
        job = await service.submit(draft("alone"))
        await service.wait(job.spec.job_id, timeout=GUARD_SECONDS)
    assert engine.batches == [] and engine.generate_calls == 1  # alone, through generate
    assert calls == 0


async def test_queued_jobs_of_one_shape_run_together_and_others_wait_their_turn() -> None:
    gate = threading.Event()
    engine = FakeEngine(load_gate=gate)
    async with batching(engine, max_batch=3, batch_wait_ms=0, clock=ManualClock()) as (service, _runner, seen):
        jobs = [
            await service.submit(draft("a", seed=1, guidance_scale=5.0)),
            await service.submit(draft("b", seed=2, guidance_scale=9.0)),
            await service.submit(draft("other size", width=128)),
            await service.submit(draft("c", seed=3)),
            await service.submit(draft("d", seed=4)),
        ]
        gate.set()  # the model "loads": the runner claims from a queue of five
        for job in jobs:
            await service.wait(job.spec.job_id, timeout=GUARD_SECONDS)
        views = [await service.get(job.spec.job_id) for job in jobs]
    assert [view.status for view in views] == [JobStatus.COMPLETED] * 5
    # At most three, in queue order, skipping the one of another size, which runs next, alone, as
    # does the last one (alone: through generate, not generate_batch).
    assert engine.batches == [("a", "b", "c")]
    assert engine.generate_calls == 5
    completed = {e.job_id: e for e in seen if isinstance(e, JobCompleted)}
    assert [completed[job.spec.job_id].seeds for job in jobs[:2]] == [(1,), (2,)]


async def test_cancelling_one_job_of_a_batch_leaves_the_others_to_complete() -> None:
    gate = threading.Event()
    engine = FakeEngine(load_gate=gate, step_seconds=0.01)
    async with batching(engine, max_batch=3, batch_wait_ms=0, clock=ManualClock()) as (service, _runner, seen):
        jobs = [await service.submit(draft(name)) for name in ("a", "b", "c")]
        gate.set()
        await until(lambda: any(isinstance(e, StepProgressed) and e.job_id == jobs[0].spec.job_id for e in seen))
        await service.cancel(jobs[1].spec.job_id)
        for job in jobs:
            await service.wait(job.spec.job_id, timeout=GUARD_SECONDS)
        statuses = [(await service.get(job.spec.job_id)).status for job in jobs]
    assert engine.batches == [("a", "b", "c")]
    assert statuses == [JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.COMPLETED]

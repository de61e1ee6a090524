"""The bounded queue (reservations, positions, removal) and the store's result TTL."""

from __future__ import annotations

import asyncio

import pytest

from sdworker.domain.request import GenerationRequest
from sdworker.errors import QueueFull
from sdworker.jobs.queue import InMemoryJobQueue
from sdworker.jobs.spec import JobSpec
from sdworker.jobs.state import JobStatus
from sdworker.jobs.store import InMemoryJobStore, JobRecord
from sdworker.previews.options import PreviewOptions


def spec(job_id: str) -> JobSpec:
    request = GenerationRequest("p", width=512, height=512, seed=1)
    return JobSpec(job_id=job_id, request=request, preview=PreviewOptions(), created_at=0.0)


async def test_reservations_count_against_the_bound_and_can_be_released() -> None:
    queue = InMemoryJobQueue(2, retry_after_seconds=lambda: 7)
    first = queue.reserve()
    second = queue.reserve()
    with pytest.raises(QueueFull) as raised:
        queue.reserve()
    assert raised.value.retry_after_seconds == 7
    queue.release(second)
    queue.release(second)  # idempotent
    assert queue.put(first, spec("a")) == 1
    third = queue.reserve()
    assert queue.put(third, spec("b")) == 2
    with pytest.raises(QueueFull):
        queue.reserve()


async def test_positions_removal_and_fifo_get() -> None:
    queue = InMemoryJobQueue(5)
    for name in "abc":
        queue.put(queue.reserve(), spec(name))
    assert [queue.position(n) for n in "abc"] == [1, 2, 3]
    assert queue.remove("b") and not queue.remove("b")
    assert queue.position("c") == 2 and queue.job_ids() == ["a", "c"]
    assert (await queue.get()).job_id == "a"
    assert (await queue.get()).job_id == "c"
    waiter = asyncio.create_task(queue.get())
    await asyncio.sleep(0)
    assert not waiter.done()
    queue.put(queue.reserve(), spec("d"))
    assert (await asyncio.wait_for(waiter, 1.0)).job_id == "d"


def test_store_forgets_only_finished_jobs_after_the_ttl() -> None:
    now = [1000.0]
    store = InMemoryJobStore(ttl_seconds=60, clock=lambda: now[0])
    running = JobRecord(spec=spec("run"), status=JobStatus.RUNNING)
    done = JobRecord(spec=spec("done"), status=JobStatus.COMPLETED, finished_at=1000.0)
    for record in (running, done):
        store.add(record)
    now[0] = 1059.0
    assert store.expire() == []
    now[0] = 1061.0
    assert store.expire() == ["done"]
    assert store.get("done") is None and store.get("run") is running
    assert [r.job_id for r in store.records()] == ["run"]

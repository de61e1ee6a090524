"""``AsyncClient`` against the real server: the same behaviour as ``Client``, awaited."""

from __future__ import annotations

import asyncio

import pytest

from sdworker.client import (
    AsyncClient,
    BadRequest,
    JobCancelled,
    JobCompleted,
    JobQueued,
    JobStarted,
    NotFound,
    PreviewOptions,
    QueueFull,
    Reconnect,
    ReconnectNotice,
    StepProgressed,
)

from .conftest import JOB, LONG, job_status
from .proxy import TcpProxy

pytestmark = [pytest.mark.live, pytest.mark.slow]


async def test_events_in_order_and_a_cut_stream_resumed(url: str, proxy: TcpProxy) -> None:
    notices: list[ReconnectNotice] = []
    async with AsyncClient(proxy.url, reconnect=Reconnect(initial_delay_seconds=0.05)) as client:
        job = await client.submit(**{**JOB, "steps": 40, "width": 128, "height": 128}, preview=PreviewOptions(every=5))
        received = []
        async for event in job.events(on_reconnect=notices.append):
            received.append(event)
            if len(received) == 4:
                proxy.cut()
    assert isinstance(received[0], JobQueued) and isinstance(received[1], JobStarted)
    assert [e.step for e in received[2:-1] if isinstance(e, StepProgressed)] == list(range(1, 41))
    assert isinstance(received[-1], JobCompleted) and received[-1].seed == 7
    assert notices and any(
        f"last-event-id: {notices[0].last_event_id}\r\n" in r for r in proxy.requests() if "/stream" in r
    )
    async with AsyncClient(url) as direct:
        assert [e.id async for e in direct.events(job.job_id)] == [e.id for e in received]
        result = await direct.generate(**JOB)
        assert result.seed == 7 and result.images[0].size == (64, 64)
        assert (await direct.get(result.job_id)).status == "completed"
        assert (await direct.health()).healthy and (await direct.info()).limits["max_queue"] == 2


async def test_cancel_a_full_queue_and_cancelling_generate(url: str) -> None:
    async with AsyncClient(url) as client:
        blocker = await client.submit(**LONG)
        while job_status(url, blocker.job_id) != "running":
            await asyncio.sleep(0.05)
        queued = [await client.submit(**JOB) for _ in range(2)]
        with pytest.raises(QueueFull) as raised:
            await client.submit(**JOB)
        assert raised.value.retry_after_seconds >= 1
        await queued[1].cancel()
        with pytest.raises(JobCancelled) as cancelled:
            await queued[1].wait()
        assert cancelled.value.code == "cancelled"
        # A task running generate() that is cancelled cancels its job on the server.
        task = asyncio.create_task(client.generate(**JOB))
        while not any(j.status == "queued" and j.job_id not in (queued[0].job_id,) for j in await client.list()):
            await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await blocker.cancel()
        jobs = await client.list()
        assert jobs[0].status == "cancelled" and jobs[0].job_id not in (blocker.job_id, queued[0].job_id)


async def test_the_same_idempotency_key_twice_gives_one_job_async(url: str) -> None:
    async with AsyncClient(url) as client:
        before = len(await client.list())
        first = await client.submit(**JOB, idempotency_key="async-client-test-key-1")
        second = await client.submit(**JOB, idempotency_key="async-client-test-key-1")
        assert second.job_id == first.job_id and len(await client.list()) == before + 1


async def test_errors_carry_the_servers_code_and_field_async(url: str) -> None:
    async with AsyncClient(url) as client:
        with pytest.raises(BadRequest) as raised:
            await client.submit(**{**JOB, "width": 65})
        assert (raised.value.code, raised.value.field) == ("invalid_request", "width")
        with pytest.raises(NotFound):
            await client.get("no-such-job")

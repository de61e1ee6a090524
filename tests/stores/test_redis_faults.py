"""Faults of the Redis store that only Redis can have, each against a real redis-server: the stream
hub's read position, the publish script's fence, and what counts as a watcher."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from sdworker.events.bus import EventBus
from sdworker.events.types import JobCompleted, JobEnded
from sdworker.stores.redis.connection import connect
from sdworker.stores.redis.hub import StreamHub
from sdworker.stores.redis.keys import Keys
from sdworker.stores.redis.results import FleetResults
from tests.redis_server import RedisServer

GUARD_SECONDS = 15.0


class FailsOnce:
    """The hub's Redis client, except that the first call of ``method`` raises like a dropped
    connection (what a failover or a restart of Redis does to one command)."""

    def __init__(self, client: Any, method: str) -> None:
        self._client = client
        self._method = method
        self.failed = False

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if name != self._method or self.failed:
            return attribute

        async def fail(*args: Any, **kwargs: Any) -> Any:
            self.failed = True
            raise RedisConnectionError("connection lost (test)")

        return fail


@pytest.fixture
async def redis_parts(redis_server: RedisServer) -> AsyncIterator[tuple[Any, Any, Keys]]:
    client = connect(redis_server.url, name="test-hub")
    reader = connect(redis_server.url, name="test-hub-reader", single=True)
    try:
        yield client, reader, Keys(f"h{uuid.uuid4().hex[:8]}")
    finally:
        await client.aclose()
        await reader.aclose()


async def _append(client: Any, keys: Keys, job_id: str, seq: int, kind: str, data: dict[str, Any]) -> None:
    await client.xadd(keys.events(job_id), {"t": kind, "d": json.dumps(data), "at": "1.0"}, id=f"0-{seq}")


async def _finish(client: Any, keys: Keys, job_id: str, first_seq: int) -> None:
    await client.hset(keys.job(job_id), mapping={"images": 1})
    await client.set(keys.image(job_id, 0), b"png")
    await _append(client, keys, job_id, first_seq, "complete",
                  {"seed": 1, "seeds": [1], "width": 64, "height": 64, "images": 1})
    await _append(client, keys, job_id, first_seq + 1, "end", {"marker": "[DONE]"})


async def _read_to_end(sub: Any) -> list[Any]:
    events = []
    async with asyncio.timeout(GUARD_SECONDS):
        while (event := await sub.next(timeout=GUARD_SECONDS)) is not None:
            events.append(event)
    return events


async def test_a_redis_error_while_decoding_live_entries_does_not_skip_the_terminal_event(
    redis_parts: tuple[Any, Any, Keys],
) -> None:
    client, reader, keys = redis_parts
    job_id = "job1"
    await _append(client, keys, job_id, 1, "queued", {"position": 1})
    flaky = FailsOnce(client, "mget")  # the complete entry's images are read with MGET
    hub = StreamHub(flaky, reader, keys, EventBus(), "node1", FleetResults(None, keys, flaky))
    hub.start()
    try:
        sub = await hub.subscribe(job_id, 0)
        assert sub is not None
        await _finish(client, keys, job_id, 2)
        events = await _read_to_end(sub)
        assert flaky.failed
        assert [type(e) for e in events][-2:] == [JobCompleted, JobEnded]
    finally:
        await hub.close()


async def test_a_failed_history_load_leaves_nothing_behind_and_the_next_watcher_loads_it(
    redis_parts: tuple[Any, Any, Keys],
) -> None:
    client, reader, keys = redis_parts
    job_id = "job2"
    await _append(client, keys, job_id, 1, "queued", {"position": 1})
    await _finish(client, keys, job_id, 2)
    flaky = FailsOnce(client, "mget")
    hub = StreamHub(flaky, reader, keys, EventBus(), "node1", FleetResults(None, keys, flaky))
    hub.start()
    try:
        with pytest.raises(RedisConnectionError):
            await hub.subscribe(job_id, 0)
        sub = await hub.subscribe(job_id, 0)
        assert sub is not None
        events = await _read_to_end(sub)
        assert [type(e) for e in events][-2:] == [JobCompleted, JobEnded]
    finally:
        await hub.close()


async def test_the_publish_script_refuses_a_stale_fence(request: pytest.FixtureRequest, tmp_path: Any) -> None:
    """A zombie's heartbeat usually notices first that its lease is gone; the script must refuse its
    write anyway (the fence is the only guard between a heartbeat and the next publish)."""
    from tests.stores.test_conformance import draft, open_stores

    async with open_stores("redis", request, tmp_path) as stores:
        job_id = (await stores.service.submit(draft())).job_id
        first = await stores.claim_one()  # fence 1
        await first.release()  # the fence moves on; another attempt claims it
        second = await stores.claim_one()
        assert second.spec.job_id == job_id
        source: Any = stores.source
        k = source.keys
        before = await source._redis.xlen(k.events(job_id))
        seq = await source.publish_script(
            keys=[k.job(job_id), k.events(job_id), k.preview(job_id)],
            args=["1", "progress", json.dumps({"step": 1, "total": 2}), 1, 2, 100],
        )
        assert seq == 0
        assert await source._redis.xlen(k.events(job_id)) == before


async def test_a_worker_running_a_job_is_busy_in_the_registry(request: pytest.FixtureRequest, tmp_path: Any) -> None:
    """(The fleet test accepted "ready" or "busy", so a worker that never said busy passed it.)"""
    from tests.stores.test_conformance import _eventually, draft, open_stores, png

    async with open_stores("redis", request, tmp_path) as stores:
        service: Any = stores.service

        async def status(expected: str, job: str | None) -> bool:
            [worker] = (await service.fleet(fresh=True)).workers
            return bool(worker.status == expected and worker.current_job == job)

        await _eventually(lambda: status("ready", None))
        job_id = (await stores.service.submit(draft())).job_id
        lease = await stores.claim_one()
        await _eventually(lambda: status("busy", job_id))
        assert await lease.complete((png(),), (3,), 64, 64)
        await _eventually(lambda: status("ready", None))

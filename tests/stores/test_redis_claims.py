"""A Redis claim costs the same at any queue depth, and queue positions still reach the jobs somebody
watches. Against a real redis-server of its own (so Redis's own command counters see only this test):
the API side and the GPU side are the real ``RedisJobService`` and ``RedisJobSource``; the work is
counted with ``INFO commandstats``, which counts the commands a Lua script issues too. No timing."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis

from sdworker.domain.request import GenerationRequest
from sdworker.engine.fake import FakeEngine
from sdworker.events.types import JobQueued
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.jobs.protocol import Lease
from sdworker.jobs.spec import JobDraft
from sdworker.settings import Settings
from sdworker.stores.redis.service import RedisJobService
from sdworker.stores.redis.source import RedisJobSource
from tests.redis_server import RedisServer

GUARD_SECONDS = 30.0
SHALLOW, DEEP = 3, 600


def draft(seed: int = 3, size: int = 64) -> JobDraft:
    return JobDraft(GenerationRequest("a cat", num_inference_steps=2, width=size, height=size, seed=seed,
                                      guidance_scale=7.0))


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if not RedisServer.available():
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("claims-redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@dataclass
class Side:
    service: RedisJobService
    source: RedisJobSource
    model: str

    async def claim(self, limit: int = 1) -> list[Lease]:
        async with asyncio.timeout(GUARD_SECONDS):
            while not (leases := await self.source.claim([self.model], limit=limit, wait_seconds=0.2)):
                pass
        return leases

    async def fill(self, count: int, owners: int = 1) -> list[str]:
        """``count`` jobs, spread over ``owners`` owners (``owner-0`` gets the first, and so on round)."""
        ids: list[str] = []
        for start in range(0, count, 50):
            views = await asyncio.gather(*(self.service.submit(draft(seed=i), owner=f"owner-{i % owners}")
                                           for i in range(start, min(count, start + 50))))
            ids += [v.job_id for v in views]
        return ids


@pytest.fixture
async def side(own_redis: RedisServer) -> AsyncIterator[Side]:
    model = FakeEngine().model
    # A long heartbeat: the worker's registry beat stays out of the counted window.
    settings = Settings(model=model, redis_url=own_redis.url, redis_prefix=f"k{uuid.uuid4().hex[:8]}",
                        lease_heartbeat_seconds=30.0, claim_idle_seconds=60.0, max_queue=5000)
    metrics = ServiceMetrics()
    service = RedisJobService(settings, metrics)
    source = RedisJobSource(settings, metrics=metrics)
    await service.start()
    await source.set_engine(FakeEngine().info, state="ready")
    try:
        yield Side(service, source, model)
    finally:
        source.stop_claiming()
        await source.close()
        await service.close()


def command_counts(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in stats.items()
            if name not in ("cmdstat_info", "cmdstat_config")}


async def counted_claim(side: Side, client: redis.Redis) -> tuple[dict[str, int], Lease]:
    """The commands Redis ran for one claim (scripts' inner commands included), after the claim's
    own follow-ups (the lease's first heartbeat, the registry beat) have run."""
    await asyncio.sleep(0.3)
    client.config_resetstat()
    [lease] = await side.claim()
    await asyncio.sleep(0.3)  # the lease's first heartbeat; the next is a second later
    return command_counts(client), lease


async def test_a_claim_does_the_same_work_at_any_queue_depth(side: Side, own_redis: RedisServer) -> None:
    client = redis.Redis.from_url(own_redis.url)
    await side.fill(SHALLOW + 1)
    _, lease = await counted_claim(side, client)  # the first claim also loads scripts, creates the group
    assert await lease.complete((b"png",), (3,), 64, 64)
    shallow, lease = await counted_claim(side, client)
    assert await lease.complete((b"png",), (3,), 64, 64)
    await side.fill(DEEP)
    deep, lease = await counted_claim(side, client)
    assert await lease.complete((b"png",), (3,), 64, 64)
    client.close()
    # One event is appended (started); no other job is written to or read, however deep the queue.
    assert shallow["xadd"] == deep["xadd"] == 1, (shallow, deep)
    # (ZRANGE itself is not asserted absent: the API node's background loops, the queue sweep and the
    # webhook relay, read the head of their sets with bounded ZRANGEs while the claim is counted.)
    # One pass of the API node's queue sweep (about 8 reads, once a second) may fall in one counted
    # window and not the other; a claim that did per-job work would show 600 more.
    assert abs(sum(deep.values()) - sum(shallow.values())) <= 12, (shallow, deep)


async def test_a_claim_does_the_same_work_whatever_the_number_of_owners(side: Side, own_redis: RedisServer) -> None:
    """The fair order (round-robin by owner) is kept in per-owner sets: a claim reads the head of each,
    never the owners or the queue. Both counted claims pass over the job whose entry they read (its
    owner has started a job; another owner never has) and start another: the same path, 2 owners or 200."""
    client = redis.Redis.from_url(own_redis.url)
    x1 = (await side.service.submit(draft(seed=1), owner="x")).job_id
    await side.service.submit(draft(seed=2), owner="x")
    y1 = (await side.service.submit(draft(seed=3), owner="y")).job_id
    _, lease = await counted_claim(side, client)
    assert lease.spec.job_id == x1
    assert await lease.complete((b"png",), (3,), 64, 64)
    few, lease = await counted_claim(side, client)  # reads x's second job's entry; y has never started
    assert lease.spec.job_id == y1
    assert await lease.complete((b"png",), (3,), 64, 64)
    await side.fill(DEEP, owners=200)
    many, lease = await counted_claim(side, client)  # reads x's again; 200 owners have never started
    assert lease.spec.owner not in ("x", "y")
    assert await lease.complete((b"png",), (3,), 64, 64)
    client.close()
    # The job passed over gets a new entry, the one started its event: two appends in both.
    assert few["xadd"] == many["xadd"] == 2 and few["xclaim"] == many["xclaim"], (few, many)
    # Within one pass of the API node's queue sweep (see above); a claim that read the owners would
    # show 200 more.
    assert abs(sum(many.values()) - sum(few.values())) <= 12, (few, many)


async def test_watchers_hear_their_new_position_and_unwatched_jobs_get_no_writes(side: Side) -> None:
    ids = [(await side.service.submit(draft(seed=i))).job_id for i in range(4)]  # one by one: in this order
    watched, unwatched = ids[2], ids[3]
    sub = await side.service.open_stream(watched, 0)
    assert sub is not None
    positions: list[int] = []

    async def next_position() -> int:
        async with asyncio.timeout(GUARD_SECONDS):
            while True:
                event = await sub.next(timeout=GUARD_SECONDS)
                if isinstance(event, JobQueued):
                    positions.append(event.position)
                    return event.position

    assert await next_position() == 3  # the submit's own event
    leases = await side.claim()
    assert await next_position() == 2
    leases += await side.claim()
    assert await next_position() == 1
    assert (await side.service.get(unwatched)).queue_position == 2  # asked: computed then (fair.POSITION)
    await side.service.cancel(ids[0])  # already running: no move
    await side.service.cancel(unwatched)
    leases += await side.claim()
    assert leases[-1].spec.job_id == watched and positions == [3, 2, 1]
    sub.close()
    client = redis.Redis.from_url(side.service._settings.redis_url or "")
    kinds = [fields[b"t"] for _, fields in client.xrange(side.source.keys.events(unwatched))]
    client.close()
    assert kinds.count(b"queued") == 1, kinds  # only its submit's: nobody watched it

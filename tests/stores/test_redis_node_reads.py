"""What an API node on Redis reads per request, counted by a real redis-server of its own (``INFO
commandstats``, which sees only this test's node): watchers that connect together share the job's
reads, and a submit does not re-read the fleet it read a moment ago, yet never refuses on that old
view. Behaviour, not time: the counts are Redis's own."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis

from sdworker.domain.request import GenerationRequest
from sdworker.engine.fake import FakeEngine
from sdworker.errors import ModelNotFound
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.jobs.spec import JobDraft
from sdworker.settings import Settings
from sdworker.stores.redis.service import RedisJobService
from sdworker.stores.redis.source import RedisJobSource
from tests.redis_server import RedisServer

WATCHERS = 200
SUBMITS = 20


@contextlib.contextmanager
def monitored(url: str) -> Iterator[list[list[str]]]:
    """Every command Redis runs while the block runs (MONITOR, read on a thread), as [NAME, args...];
    commands a Lua script issues are included, marked by MONITOR and kept the same way."""
    commands: list[list[str]] = []
    stop = threading.Event()
    started = threading.Event()

    def read() -> None:
        with redis.Redis.from_url(url).monitor() as monitor:
            started.set()
            for entry in monitor.listen():
                if stop.is_set():
                    return
                words = entry["command"].split()
                commands.append([words[0].upper(), *words[1:]] if words else [])

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    started.wait(5)
    time.sleep(0.1)  # MONITOR is registered once the thread is in listen()
    try:
        yield commands
    finally:
        stop.set()
        redis.Redis.from_url(url).ping()  # wakes the reader, which then stops
        reader.join(5)


def draft(model: str | None = None) -> JobDraft:
    return JobDraft(GenerationRequest("a cat", num_inference_steps=2, width=64, height=64, seed=3, model=model))


@pytest.fixture(scope="module")
def own_redis(tmp_path_factory: pytest.TempPathFactory) -> Any:
    if not RedisServer.available():
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path_factory.mktemp("node-reads-redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def node(own_redis: RedisServer) -> AsyncIterator[tuple[RedisJobService, Settings]]:
    settings = Settings(model=FakeEngine().model, redis_url=own_redis.url, redis_prefix=f"r{uuid.uuid4().hex[:8]}",
                        lease_heartbeat_seconds=30.0, claim_idle_seconds=60.0, max_queue=1000,
                        expect_models=(FakeEngine().model,))
    service = RedisJobService(settings, ServiceMetrics())
    await service.start()
    try:
        yield service, settings
    finally:
        await service.close()


def counts(client: redis.Redis) -> dict[str, int]:
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in client.info("commandstats").items()}


async def test_watchers_connecting_together_share_the_owner_read_and_the_watcher_advert(
    node: tuple[RedisJobService, Settings], own_redis: RedisServer
) -> None:
    service, _ = node
    job_id = (await service.submit(draft())).job_id
    client = redis.Redis.from_url(own_redis.url)
    client.config_resetstat()
    subs = await asyncio.gather(*(service.open_stream(job_id, 0) for _ in range(WATCHERS)))
    seen = counts(client)
    client.close()
    assert all(sub is not None for sub in subs)
    # One read of the job's owner and one advert to the workers for all of them (it was one each:
    # 200 commands queued behind the node's 4 pooled connections, and 503s under load).
    assert seen.get("hmget", 0) <= 2, seen
    assert seen.get("evalsha", 0) <= 2, seen
    for sub in subs:
        assert sub is not None
        sub.close()


async def test_a_submit_reuses_a_young_fleet_but_never_refuses_on_it(
    node: tuple[RedisJobService, Settings], own_redis: RedisServer
) -> None:
    service, settings = node
    worker = RedisJobSource(settings, metrics=ServiceMetrics())  # a ready worker: the old view is trusted
    await worker.set_engine(FakeEngine().info, state="ready")
    worker.stop_claiming()
    try:
        await service.submit(draft())  # reads the fleet (and loads the script)
        client = redis.Redis.from_url(own_redis.url)
        client.config_resetstat()
        with monitored(own_redis.url) as commands:
            for _ in range(SUBMITS):
                await service.submit(draft())
        seen = counts(client)
    finally:
        await worker.close()
    # The fleet read is an HGETALL of the workers hash (and of the registrations); once per submit
    # that was SUBMITS of each. The node's background sweep (once a second) reads its own, hence a
    # little slack. Counted by key from MONITOR: the SUBMIT script's own HGETALL (of an owner count,
    # for the queue position) is another key.
    fleet_reads = [c for c in commands if c[:2] == ["HGETALL", f"{settings.redis_prefix}:workers"]]
    assert len(fleet_reads) <= 3, commands
    assert seen["evalsha"] == SUBMITS, seen
    # A model nobody served a moment ago is taken as soon as a worker registers it: the refusal the
    # cached fleet would give is checked against the fleet as Redis has it now.
    late = "late-model"
    with pytest.raises(ModelNotFound):
        await service.submit(draft(late))
    source = RedisJobSource(settings.model_copy(update={"model": late}), metrics=ServiceMetrics())
    await source.set_engine(FakeEngine().info, state="ready")
    try:
        view = await service.submit(draft(late))
        assert view.spec.request.model == late
    finally:
        source.stop_claiming()
        await source.close()
    client.close()

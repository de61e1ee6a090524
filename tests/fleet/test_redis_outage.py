"""Redis itself dies (SIGKILL, append-only file on) with jobs queued, and comes back on the same port
and folder: nothing it acknowledged is lost, the API answers 503 (never hangs) while it is away,
``/ready`` says why, and open streams get a ``notice`` and resume."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.redis_server import RedisServer

from .conftest import API_ARGS, WORKER_ARGS
from .procs import ApiNode, Worker, wait_until, workers_ready
from .stream import Watcher, job, submit, until, watch

pytestmark = pytest.mark.live


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of this test's own: it is killed and restarted."""
    if not RedisServer.available():
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_jobs_survive_a_redis_crash_and_the_api_says_503_meanwhile(
    own_redis: RedisServer, demo_cache_dir: Path, tmp_path: Path
) -> None:
    prefix = f"crash{uuid.uuid4().hex[:6]}"
    api = ApiNode(own_redis.url, prefix, cache_dir=demo_cache_dir, log_path=tmp_path / "api.log", extra=API_ARGS)
    worker = Worker(own_redis.url, prefix, "solo", cache_dir=demo_cache_dir, log_path=tmp_path / "w.log",
                    extra=WORKER_ARGS)
    try:
        api.wait_up()
        wait_until(lambda: workers_ready(api.url, {"solo"}), 120, worker.log, worker)
        async with httpx.AsyncClient(timeout=30) as client:
            running = await submit(client, api.url, steps=300, seed=1)
            queued = [await submit(client, api.url, steps=20, seed=s) for s in (2, 3)]
            await until(lambda: _status_is(client, api.url, running, "running"), what="the first job to run")
            watcher = Watcher()
            task = asyncio.create_task(watch(client, f"{api.url}/v1/jobs/{queued[-1]}/stream", watcher))
            await until(lambda: _nonempty(watcher), what="the stream to start")

            own_redis.kill()
            refused = await client.post(f"{api.url}/v1/jobs", json={"prompt": "x", "steps": 2, "width": 64,
                                                                     "height": 64})
            assert refused.status_code == 503, refused.text
            assert "Redis" in refused.json()["error"]["message"] and "unavailable" in refused.json()["error"]["message"]
            ready = await client.get(f"{api.url}/ready")
            assert ready.status_code == 503 and "Redis" in ready.json()["reason"]
            await until(lambda: _has_notice(watcher), 30, "the stream's notice")

            own_redis.start()  # same port, same folder: it loads the append-only file
            await asyncio.wait_for(task, 180)
            assert watcher.names()[-2:] == ["complete", "end"] and watcher.count("complete") == 1
            assert watcher.ids() == sorted(set(watcher.ids())), "the resumed stream repeats an event"
            for job_id in [running, *queued]:
                view = await until(lambda j=job_id: _finished(client, api.url, j), 180, f"{job_id} to finish")
                assert view["status"] == "completed", view
            assert (await client.get(f"{api.url}/ready")).status_code == 200
    finally:
        worker.stop()
        api.stop()


async def _status_is(client: httpx.AsyncClient, base: str, job_id: str, status: str) -> bool:
    return (await job(client, base, job_id))["status"] == status


async def _finished(client: httpx.AsyncClient, base: str, job_id: str) -> dict | None:
    try:
        view = await job(client, base, job_id)
    except (AssertionError, httpx.HTTPError):
        return None  # Redis still loading: 503
    return view if view["status"] in ("completed", "failed", "cancelled") else None


async def _nonempty(watcher: Watcher) -> bool:
    return bool(watcher.events)


async def _has_notice(watcher: Watcher) -> bool:
    return "notice" in watcher.names()

"""API nodes: any node streams any job, a dead node's watcher resumes on another, a thousand watchers
are not a thousand Redis connections, the fleet is described, and the node never loads torch."""

from __future__ import annotations

import asyncio
import contextlib
import signal

import httpx
import redis

from .conftest import Fleet
from .stream import Watcher, job, submit, until, watch


async def test_a_watcher_of_a_killed_node_resumes_on_another_with_exactly_the_missing_events(fleet: Fleet) -> None:
    fleet.wait_workers(1)
    doomed = fleet.api()
    doomed.wait_up()
    b = fleet.apis[1].url
    async with httpx.AsyncClient(timeout=30) as client:
        job_id = await submit(client, doomed.url, steps=200, seed=3)
        first = Watcher()
        task = asyncio.create_task(watch(client, f"{doomed.url}/v1/jobs/{job_id}/stream", first))
        await until(lambda: _has(first, 8), what="the first events")
        doomed.signal(signal.SIGKILL)
        with contextlib.suppress(httpx.HTTPError, AssertionError):  # the connection died with the node
            await asyncio.wait_for(task, 30)
        doomed.kill()
        seen = first.ids()
        assert seen and first.count("end") == 0
        rest = await watch(client, f"{b}/v1/jobs/{job_id}/stream", Watcher(), last_event_id=seen[-1])
        whole = await watch(client, f"{b}/v1/jobs/{job_id}/stream", Watcher())
        assert seen + rest.ids() == whole.ids(), "the resumed stream repeats or misses events"
        assert rest.names()[-2:] == ["complete", "end"] and rest.count("complete") == 1


async def _has(watcher: Watcher, count: int) -> bool:
    return len(watcher.ids()) >= count


def _node_connections(client: redis.Redis, name: str) -> int:
    return sum(1 for c in client.client_list() if c.get("name", "").startswith(name))


def _connections_opened(client: redis.Redis) -> int:
    """Every connection Redis ever accepted (a counter: nothing opened between two looks is missed)."""
    return int(client.info("stats")["total_connections_received"])


async def test_two_hundred_watchers_use_a_bounded_number_of_redis_connections(fleet: Fleet) -> None:
    fleet.wait_workers(1)
    node = fleet.apis[0]
    node_name = f"sdworker-api-{node.pid}"
    looker = redis.Redis.from_url(fleet.redis.url)
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=None)) as client:
        job_id = await submit(client, node.url, steps=300, seed=4)
        held = _node_connections(looker, node_name)
        opened = _connections_opened(looker)
        watchers = [Watcher() for _ in range(200)]
        tasks = [asyncio.create_task(watch(client, f"{node.url}/v1/jobs/{job_id}/stream", w)) for w in watchers]
        await asyncio.gather(*tasks)
        # The node's bounded pool may open a few more connections under the burst; 200 watchers
        # opening one each would show here, however briefly they were held.
        new = _connections_opened(looker) - opened
        after = _node_connections(looker, node_name)
        looker.close()
        assert held >= 1 and held + new <= 8, f"{held} held + {new} opened for one node's 200 watchers"
        assert after <= held + new
        for w in watchers:
            assert w.count("complete") == 1 and w.names()[-1] == "end"
        assert len({tuple(w.ids()) for w in watchers}) == 1, "every watcher got the same events"


async def test_the_fleet_is_described_and_unknown_models_are_refused(fleet: Fleet) -> None:
    live = fleet.wait_workers(2)
    a = fleet.apis[0].url
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(f"{a}/v1/jobs", json={"prompt": "x", "model": "no-such-model", "steps": 2})
        assert response.status_code == 404 and response.json()["error"]["code"] == "model_not_found", response.text
        job_id = await submit(client, a, steps=400, seed=6)
        await until(lambda: _status(client, a, job_id, "running"), what="the job to run")

        async def listed() -> list | None:  # the fleet view is cached for a second
            workers = (await client.get(f"{a}/v1/workers")).json()["workers"]
            return workers if job_id in [w["current_job"] for w in workers] else None

        workers = await until(listed, what="the job to show as a worker's current job")
        by_id = {w["id"]: w for w in workers}
        assert {w.worker_id for w in live} <= set(by_id)
        for worker in live:
            entry = by_id[worker.worker_id]
            assert entry["model_id"] == "demo" and entry["device"] == "cpu"
            # A worker running a job says so (a job of an earlier test may still be running on it).
            assert entry["status"] == ("busy" if entry["current_job"] else "ready"), entry
        assert any(w["current_job"] == job_id and w["status"] == "busy" for w in workers), workers
        info = (await client.get(f"{a}/v1/info")).json()
        assert info["backend"] == "redis" and info["models"] == ["demo"] and len(info["workers"]) >= 2
        models = (await client.get(f"{a}/v1/models")).json()
        ids = [m["id"] for m in models["data"]]
        bundle = ["demo-flux1", "demo-flux1-kontext", "demo-flux1-q8", "demo-flux1-transformer", "demo-flux2",
                  "demo-qwenimage", "demo-qwenimage-edit", "demo-qwenimage-edit-plus", "demo-sd15",
                  "demo-sd15-inpainting", "demo-sd3", "demo-sdxl", "demo-zimage"]
        assert ids == bundle, ids  # the demo library, as its workers registered it
        metrics = (await client.get(f"{a}/metrics")).text
        assert "sdworker_fleet_workers" in metrics and "sdworker_queue_depth" in metrics
        await client.delete(f"{a}/v1/jobs/{job_id}")
        await until(lambda: _status(client, a, job_id, "cancelled"), what="the cancel")


async def _status(client: httpx.AsyncClient, base: str, job_id: str, status: str) -> bool:
    return (await job(client, base, job_id))["status"] == status


def test_an_api_node_never_loads_torch_and_answers_health_at_once(fleet: Fleet) -> None:
    node = fleet.apis[0]
    assert httpx.get(node.url + "/health", timeout=5).status_code == 200  # the timeout guards a hang
    with open(f"/proc/{node.pid}/maps") as maps:
        libraries = maps.read()
    assert "libtorch" not in libraries and "torch/lib" not in libraries
    # Same check for a worker, so the test would notice if the file stopped showing libraries.
    worker = fleet.live_workers()[0]
    with open(f"/proc/{worker.pid}/maps") as maps:
        assert "libtorch" in maps.read()

"""The service over real uvicorn with the demo model: incremental SSE, replay and resume, 200
watchers, disconnects, cancellation, 429, bad input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from api.test_bad_input import CASES

from .server import LiveServer
from .sse_client import read_events

pytestmark = [pytest.mark.live, pytest.mark.slow]

JOB = {"prompt": "a red cube", "width": 64, "height": 64, "scheduler": "euler", "seed": 5}
# Runs for many seconds (150 steps at 256 px; the demo model does 64 px steps in ~15 ms): cancel it.
LONG = {**JOB, "steps": 150, "width": 256, "height": 256, "preview": {"every": 0}}


@pytest.fixture
async def client(live_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=live_server.url, timeout=60, limits=limits) as client:
        yield client
        # Leave the server idle for the next test.
        for job in (await client.get("/v1/jobs")).json()["jobs"]:
            if job["status"] in ("queued", "running"):
                await client.delete(f"/v1/jobs/{job['job_id']}")
        await wait_until(client, lambda jobs: all(j["status"] not in ("queued", "running") for j in jobs))


async def wait_until(client: httpx.AsyncClient, predicate: Any, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate((await client.get("/v1/jobs")).json()["jobs"]):
            await asyncio.sleep(0.05)


async def submit(client: httpx.AsyncClient, **body: Any) -> str:
    response = await client.post("/v1/jobs", json={**JOB, **body})
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


async def status(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    return dict((await client.get(f"/v1/jobs/{job_id}")).json())


async def wait_status(client: httpx.AsyncClient, job_id: str, wanted: str, timeout: float = 60.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while (current := await status(client, job_id))["status"] != wanted:
            await asyncio.sleep(0.05)
    return current


async def wait_watchers(client: httpx.AsyncClient, job_id: str, count: int, timeout: float = 30.0) -> None:
    async with asyncio.timeout(timeout):
        while (await status(client, job_id))["watchers"] != count:
            await asyncio.sleep(0.05)


async def test_events_arrive_incrementally_in_order_with_ids(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, steps=40, width=128, height=128, preview={"every": 10})
    seen_running: list[str] = []
    events = []
    async with client.stream("GET", f"/v1/jobs/{job_id}/stream") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
                if line[7:] in ("progress", "preview") and len(seen_running) < 2:
                    # The job must still be running when its first steps reach us.
                    seen_running.append((await status(client, job_id))["status"])
    assert seen_running == ["running", "running"]
    replay = await read_events(client, f"/v1/jobs/{job_id}/stream")
    assert [e.id for e in replay] == list(range(1, len(events) + 1))
    assert [e.name for e in replay][:2] == ["queued", "started"] and replay[-2].name == "complete"
    assert events[-2:] == ["complete", "end"] and replay[-1].data == "[DONE]" and "preview" in events
    steps = [e.data["step"] for e in replay if e.name in ("progress", "preview")]
    assert steps == list(range(1, 41))


async def test_resume_with_last_event_id_gives_exactly_the_missing_events_then_204(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, steps=40, width=128, height=128, preview={"every": 1})
    url = f"/v1/jobs/{job_id}/stream"
    first = await read_events(client, url, stop_after=4)  # then disconnect mid-job
    rest = await read_events(client, url, last_event_id=first[-1].id)
    ids = [e.id for e in first + rest]
    assert ids == list(range(1, len(ids) + 1)), ids  # nothing missing, nothing twice
    assert [e.name for e in rest[-2:]] == ["complete", "end"]
    full = await read_events(client, url)
    assert [e.id for e in full] == ids
    for after in (1, len(ids) // 2, len(ids) - 1):
        assert [e.id for e in await read_events(client, url, last_event_id=after)] == ids[after:]
    done = await client.get(url, headers={"Last-Event-ID": str(ids[-1])})
    assert done.status_code == 204


async def test_200_watchers_of_one_job_all_get_every_terminal_event(client: httpx.AsyncClient) -> None:
    blocker = await submit(client, **LONG)
    job_id = await submit(client, steps=6, preview={"every": 1})
    watchers = [asyncio.create_task(read_events(client, f"/v1/jobs/{job_id}/stream")) for _ in range(200)]
    await wait_watchers(client, job_id, 200)
    await client.delete(f"/v1/jobs/{blocker}")
    results = await asyncio.wait_for(asyncio.gather(*watchers), timeout=120)
    final_ids = set()
    for events in results:
        ids = [e.id for e in events]
        assert ids == sorted(set(ids))
        assert events[-2].name == "complete" and events[-2].data["job_id"] == job_id
        assert events[-1].name == "end" and events[-1].data == "[DONE]"
        final_ids.add(ids[-1])
    assert len(final_ids) == 1
    await wait_watchers(client, job_id, 0)


async def test_a_watcher_that_disconnects_leaves_nothing_behind(client: httpx.AsyncClient) -> None:
    job_id = await submit(client, **LONG)
    await wait_status(client, job_id, "running")
    before = await metric(client, "sdworker_sse_streams_open")
    events = await read_events(client, f"/v1/jobs/{job_id}/stream", stop_after=3)
    assert len(events) == 3
    async with asyncio.timeout(10):
        while (await status(client, job_id))["watchers"] != 0 or await metric(
            client, "sdworker_sse_streams_open"
        ) != before:
            await asyncio.sleep(0.05)
    assert (await status(client, job_id))["status"] == "running"


async def metric(client: httpx.AsyncClient, name: str) -> float:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(f"no metric {name}")


async def test_cancel_running_and_queued_jobs(client: httpx.AsyncClient) -> None:
    running = await submit(client, **LONG)
    queued = await submit(client, steps=4)
    await wait_status(client, running, "running")
    watch_running = asyncio.create_task(read_events(client, f"/v1/jobs/{running}/stream"))
    watch_queued = asyncio.create_task(read_events(client, f"/v1/jobs/{queued}/stream"))
    await wait_watchers(client, running, 1)
    await wait_watchers(client, queued, 1)
    assert (await client.delete(f"/v1/jobs/{queued}")).json()["status"] == "cancelled"
    queued_events = await asyncio.wait_for(watch_queued, 10)
    assert queued_events[-2].name == "error" and queued_events[-2].data["code"] == "cancelled"
    assert queued_events[-1].name == "end" and queued_events[-1].data == "[CANCELLED]"
    await client.delete(f"/v1/jobs/{running}")
    running_events = await asyncio.wait_for(watch_running, 20)  # stops within one step
    assert running_events[-2].name == "error" and running_events[-2].data["code"] == "cancelled"
    assert running_events[-1].name == "end" and running_events[-1].data == "[CANCELLED]"
    final = await status(client, running)
    assert final["status"] == "cancelled" and final["step"] < 150


async def test_full_queue_answers_429_with_retry_after(client: httpx.AsyncClient) -> None:
    await wait_status(client, await submit(client, **LONG), "running")
    for _ in range(3):  # --max-queue 3
        await submit(client, steps=2)
    refused = await client.post("/v1/jobs", json={**JOB, "steps": 2})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "queue_full"
    assert int(refused.headers["Retry-After"]) >= 1


async def test_bad_inputs_get_4xx_json_then_a_job_completes(client: httpx.AsyncClient) -> None:
    # The same cases as the API tests, over real HTTP and the real engine (the demo model has TAESD,
    # so asking for it is valid here).
    cases = [case for case in CASES if case[0] != "preview.method taesd not loaded"]
    assert len(cases) >= 20
    jobs_before = len((await client.get("/v1/jobs")).json()["jobs"])
    for name, body, expected, field in cases:
        if isinstance(body, bytes):
            response = await client.post("/v1/jobs", content=body, headers={"content-type": "application/json"})
        else:
            response = await client.post("/v1/jobs", json=body)
        assert response.status_code == expected, f"{name}: {response.status_code} {response.text[:200]}"
        assert response.json()["error"]["field"] == field, name
    assert len((await client.get("/v1/jobs")).json()["jobs"]) == jobs_before  # nothing was enqueued
    job_id = await submit(client, steps=2)
    assert (await wait_status(client, job_id, "completed"))["status"] == "completed"
    image = await client.get(f"/v1/jobs/{job_id}/image")
    assert image.status_code == 200 and image.content.startswith(b"\x89PNG")

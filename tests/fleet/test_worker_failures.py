"""A worker dies, pauses or is stopped mid-job: the job still ends exactly once (issue #9).

In this order on purpose: the tests that only pause workers first, then SIGKILL (which starts one
replacement), then SIGTERM (the last test: its worker need not be replaced). A worker takes ~10 s
to start."""

from __future__ import annotations

import asyncio
import io
import signal

import httpx
import numpy as np
from PIL import Image

from .conftest import Fleet
from .stream import Watcher, job, submit, until, watch


async def _running_on(client: httpx.AsyncClient, base: str, job_id: str, attempt: int, min_step: int = 5) -> str:
    """The worker id running ``attempt`` of the job once it has made ``min_step`` steps."""

    async def check() -> str | None:
        view = await job(client, base, job_id)
        if view["status"] == "running" and view.get("attempt") == attempt and view["step"] >= min_step:
            return str(view["worker"])
        assert view["status"] in ("queued", "running"), view
        return None

    return str(await until(check, what=f"attempt {attempt} of {job_id} running"))


async def _pixels(client: httpx.AsyncClient, base: str, job_id: str) -> np.ndarray:
    response = await client.get(f"{base}/v1/jobs/{job_id}/image")
    assert response.status_code == 200
    return np.asarray(Image.open(io.BytesIO(response.content)).convert("RGB"))


async def _finished(client: httpx.AsyncClient, base: str, job_id: str, timeout: float = 90.0) -> dict:
    async def check() -> dict | None:
        view = await job(client, base, job_id)
        return view if view["status"] in ("completed", "failed", "cancelled") else None

    return dict(await until(check, timeout, f"{job_id} to finish"))


async def _logged(proc: object, text: str) -> bool:
    return text in proc.log()  # type: ignore[attr-defined]


async def test_a_paused_worker_cannot_publish_a_second_result(fleet: Fleet) -> None:
    fleet.wait_workers(2)
    a = fleet.apis[0].url
    async with httpx.AsyncClient(timeout=30) as client:
        job_id = await submit(client, a, steps=400, seed=5)
        watcher = Watcher()
        task = asyncio.create_task(watch(client, f"{a}/v1/jobs/{job_id}/stream", watcher))
        zombie = fleet.by_id(await _running_on(client, a, job_id, attempt=1))
        zombie.signal(signal.SIGSTOP)
        try:
            taker = await _running_on(client, a, job_id, attempt=2, min_step=1)
        finally:
            zombie.signal(signal.SIGCONT)  # it wakes with attempt 1 still in its hands
        assert taker != zombie.worker_id
        await asyncio.wait_for(task, 120)
        view = await _finished(client, a, job_id)
        assert view["status"] == "completed" and view["attempt"] == 2 and view["worker"] == taker
        assert watcher.count("complete") == 1 and watcher.names()[-2:] == ["complete", "end"]
        assert watcher.ids() == sorted(set(watcher.ids()))
        # The zombie noticed it was fenced off and ran no second result into the job.
        await until(lambda: _logged(zombie, "lease lost"), 30, "the zombie to notice")
        assert (await job(client, a, job_id))["status"] == "completed"


async def test_after_max_attempts_the_job_is_dead_lettered_and_can_be_requeued(fleet: Fleet) -> None:
    """Each attempt is lost by pausing its worker past the claim time: the other worker takes it, and
    the paused one, resumed, takes the next. The fourth claim finds three lost attempts: dead letter."""
    one, two = fleet.wait_workers(2)
    a = fleet.apis[0].url
    async with httpx.AsyncClient(timeout=30) as client:
        job_id = await submit(client, a, steps=3000, seed=77)
        watcher = Watcher()
        task = asyncio.create_task(watch(client, f"{a}/v1/jobs/{job_id}/stream", watcher))
        paused = None
        try:
            for attempt in (1, 2, 3):
                holder = fleet.by_id(await _running_on(client, a, job_id, attempt=attempt, min_step=1))
                holder.signal(signal.SIGSTOP)
                if paused is not None:
                    paused.signal(signal.SIGCONT)
                paused = holder
            view = await _finished(client, a, job_id)
        finally:
            for w in (one, two):
                w.signal(signal.SIGCONT)
        await asyncio.wait_for(task, 60)
        assert view["status"] == "failed" and view["error"]["code"] == "worker_lost", view
        assert watcher.count("error") == 1 and watcher.count("complete") == 0
        assert [e.data["attempt"] for e in watcher.events if e.name == "retrying"] == [2, 3]
        dead = (await client.get(f"{a}/v1/dead")).json()["jobs"]
        assert job_id in [d["job_id"] for d in dead]
        response = await client.post(f"{fleet.apis[1].url}/v1/dead/{job_id}/requeue")
        assert response.status_code == 202, response.text
        new_id = response.json()["job_id"]
        assert new_id != job_id
        new = await job(client, a, new_id)
        assert new["parameters"]["seed"] == 77 and new["parameters"]["steps"] == 3000
        await _running_on(client, a, new_id, attempt=1, min_step=1)  # it runs again
        await client.delete(f"{a}/v1/jobs/{new_id}")
        assert job_id not in [d["job_id"] for d in (await client.get(f"{a}/v1/dead")).json()["jobs"]]
        await _finished(client, a, new_id)


async def test_sigkill_mid_job_another_worker_finishes_it_with_the_same_pixels(fleet: Fleet) -> None:
    fleet.wait_workers(2)
    a, b = fleet.apis[0].url, fleet.apis[1].url
    async with httpx.AsyncClient(timeout=30) as client:
        job_id = await submit(client, a, steps=150, seed=1234)
        watchers = [Watcher(), Watcher()]
        tasks = [asyncio.create_task(watch(client, f"{base}/v1/jobs/{job_id}/stream", w))
                 for base, w in zip((a, b), watchers, strict=True)]
        victim = fleet.by_id(await _running_on(client, a, job_id, attempt=1))
        victim.signal(signal.SIGKILL)
        fleet.worker()  # its replacement, for the next tests (starts while this one runs)
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        view = await _finished(client, a, job_id)
        assert view["status"] == "completed" and view["attempt"] == 2 and view["worker"] != victim.worker_id
        for w in watchers:
            names = w.names()
            assert w.count("complete") == 1 and names[-2:] == ["complete", "end"], names
            retry = next(e for e in w.events if e.name == "retrying")
            assert retry.data["attempt"] == 2 and retry.data["reason"] == "worker_lost"
            after = names[names.index("retrying"):]
            assert after[1] == "started" and "progress" in after, after
            assert w.ids() == sorted(set(w.ids())), "ids repeat or go back"
        assert watchers[0].ids() == watchers[1].ids(), "both nodes stream the same events and ids"
        # The same spec and seed, undisturbed: the same pixels as the retried run.
        again = await submit(client, b, steps=150, seed=1234)
        await _finished(client, b, again)
        assert np.array_equal(await _pixels(client, a, job_id), await _pixels(client, b, again))


async def test_sigterm_hands_the_job_back_without_counting_an_attempt(fleet: Fleet) -> None:
    fleet.wait_workers(2)
    a = fleet.apis[0].url
    async with httpx.AsyncClient(timeout=30) as client:
        job_id = await submit(client, a, steps=400, seed=9)
        watcher = Watcher()
        task = asyncio.create_task(watch(client, f"{a}/v1/jobs/{job_id}/stream", watcher))
        leaving = fleet.by_id(await _running_on(client, a, job_id, attempt=1))
        leaving.signal(signal.SIGTERM)  # grace 1 s: the job needs several, so it is handed back
        await asyncio.wait_for(task, 120)
        view = await _finished(client, a, job_id)
        assert view["status"] == "completed" and view["attempt"] == 1 and view["worker"] != leaving.worker_id
        retry = next(e for e in watcher.events if e.name == "retrying")
        # handed_back (not worker_lost): the other worker took it at once, not after the claim time
        assert (retry.data["attempt"], retry.data["reason"]) == (1, "handed_back")
        assert watcher.count("complete") == 1
        assert leaving.process.wait(30) == 0

"""A real process around the FakeEngine (bench/fake_server.py): a dying generation thread and a step
stuck inside the engine end every stream, and the process exits (non-zero when the thread died)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .server import ROOT, free_port
from .sse_client import Received, read_events

pytestmark = [pytest.mark.live]

JOB = {"prompt": "a cube", "width": 64, "height": 64, "steps": 20, "preview": {"every": 0}}


def start(tmp_path: Path, **env: str) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    full = {**os.environ, "SDWORKER_PORT": str(port), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **env}
    log = open(tmp_path / "server.log", "wb")  # noqa: SIM115 - the process owns it until it exits
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "fake_server.py")], cwd=ROOT, env=full, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=1).status_code == 200:
                return process, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    process.kill()
    raise TimeoutError((tmp_path / "server.log").read_text())


async def watch(client: httpx.AsyncClient, job_id: str) -> list[Received]:
    return await read_events(client, f"/v1/jobs/{job_id}/stream")


async def test_a_dying_generation_thread_fails_the_job_and_exits_non_zero(tmp_path: Path) -> None:
    process, url = start(tmp_path, SDWORKER_TEST_FAKE_FATAL_AT_STEP="3", SDWORKER_TEST_FAKE_STEP_SECONDS="0.2")
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            job_id = (await client.post("/v1/jobs", json=JOB)).json()["job_id"]
            events = await asyncio.wait_for(watch(client, job_id), 30)
            kinds = [e.name for e in events]
            assert kinds[-2:] == ["error", "end"], kinds
            assert events[-2].data["code"] == "worker_died"
            with contextlib.suppress(httpx.TransportError):  # not ready, or already gone after its drain
                assert (await client.get("/ready")).status_code == 503
        assert await asyncio.to_thread(process.wait, 30) == 70
    finally:
        process.kill()
        process.wait()


async def test_a_stuck_step_does_not_hold_the_shutdown(tmp_path: Path) -> None:
    process, url = start(
        tmp_path, SDWORKER_TEST_FAKE_STUCK_AT_STEP="2", SDWORKER_SHUTDOWN_GRACE_SECONDS="1",
    )
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as client:
            stuck = (await client.post("/v1/jobs", json=JOB)).json()["job_id"]
            queued = (await client.post("/v1/jobs", json=JOB)).json()["job_id"]
            watchers = [asyncio.create_task(watch(client, j)) for j in (stuck, stuck, queued)]
            async with asyncio.timeout(30):
                while (await client.get(f"/v1/jobs/{stuck}")).json()["step"] < 1:
                    await asyncio.sleep(0.05)
                while (await client.get(f"/v1/jobs/{stuck}")).json()["watchers"] < 2:
                    await asyncio.sleep(0.05)
            process.terminate()
            # grace (1 s) + the stop wait (2 s) + a few: every watcher has its terminal event
            results = await asyncio.wait_for(asyncio.gather(*watchers), 20)
            for events in results:
                kinds = [e.name for e in events]
                assert kinds[-2:] == ["error", "end"], kinds
        assert await asyncio.to_thread(process.wait, 20) == 0
    finally:
        process.kill()
        process.wait()

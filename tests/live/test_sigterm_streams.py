"""SIGTERM with the SQLite store (issue #18's open point): the jobs outlive the process (the running
one is handed back, the queued ones stay), so their streams cannot end with ``complete``/``error``;
each ends with a ``notice`` ``stream_closing`` instead of just stopping, and a client that acts on it
(reconnects with its Last-Event-ID after the restart) gets exactly the events it missed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from tests.fleet.stream import Watcher, watch

from .server import LiveServer, free_port

pytestmark = [pytest.mark.live, pytest.mark.slow]

JOB = {"prompt": "a red cube", "width": 64, "height": 64, "scheduler": "euler", "preview": {"every": 0}}


async def test_sigterm_ends_every_stream_with_a_notice_and_the_client_resumes_after_restart(
    demo_cache_dir: Path, tmp_path: Path
) -> None:
    args = ("--shutdown-grace-seconds", "1", "--data-dir", str(tmp_path / "data"))
    server = LiveServer(demo_cache_dir, free_port(), *args, log_path=tmp_path / "log")
    try:
        await asyncio.to_thread(server.wait_ready)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            running = (await client.post("/v1/jobs", json={**JOB, "steps": 150, "width": 256, "height": 256})).json()
            queued = (await client.post("/v1/jobs", json={**JOB, "steps": 3})).json()
            watchers = {job["job_id"]: Watcher() for job in (running, queued)}
            tasks = [asyncio.create_task(watch(client, f"{server.url}/v1/jobs/{j}/stream", w))
                     for j, w in watchers.items()]
            async with asyncio.timeout(60):
                while (await client.get(f"/v1/jobs/{running['job_id']}")).json()["step"] < 2:
                    await asyncio.sleep(0.05)
            signalled = time.monotonic()
            server.terminate()
            await asyncio.wait_for(asyncio.gather(*tasks), 30)
        code = await asyncio.to_thread(server.process.wait, 60)
        print(f"exit {time.monotonic() - signalled:.2f} s after SIGTERM (grace 1 s)")
        assert code == 0, server.log()
        for job_id, watcher in watchers.items():
            last = watcher.events[-1]
            assert last.name == "notice" and last.id is None, (job_id, watcher.names())
            assert last.data["code"] == "stream_closing" and "Last-Event-ID" in last.data["message"]
            assert not {"complete", "error", "end"} & set(watcher.names()), watcher.names()
    finally:
        server.stop()

    # The client acts on the notice: after the restart it reconnects with its last id.
    server = LiveServer(demo_cache_dir, free_port(), *args, log_path=tmp_path / "log2")
    try:
        await asyncio.to_thread(server.wait_ready)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            queued_watcher = watchers[queued["job_id"]]
            seen = queued_watcher.ids()
            resumed = await asyncio.wait_for(
                watch(client, f"{server.url}/v1/jobs/{queued['job_id']}/stream", Watcher(), last_event_id=seen[-1]),
                120,
            )
        assert resumed.names()[-2:] == ["complete", "end"], resumed.names()
        assert min(resumed.ids()) > seen[-1]  # nothing twice
    finally:
        server.stop()

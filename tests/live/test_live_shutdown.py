"""SIGTERM drains: no new jobs (/ready 503), queued jobs end with `shutting_down`, the running job gets
the grace period then is cancelled, every stream ends, and the process exits 0."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from .server import LiveServer, free_port
from .sse_client import read_events

pytestmark = [pytest.mark.live, pytest.mark.slow]

JOB = {"prompt": "a red cube", "width": 64, "height": 64, "scheduler": "euler", "preview": {"every": 0}}


async def test_sigterm_drains_jobs_and_streams_then_exits_zero(demo_cache_dir: Path, tmp_path: Path) -> None:
    # The memory store: nobody could run the jobs after the exit, so they end now. (With SQLite, the
    # default, the running job is handed back and resumes at the next start: tests/stores.)
    server = LiveServer(demo_cache_dir, free_port(), "--shutdown-grace-seconds", "2", "--store", "memory",
                        log_path=tmp_path / "log")
    try:
        await asyncio.to_thread(server.wait_ready)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            long_job = {**JOB, "steps": 150, "width": 256, "height": 256}  # far longer than the 2 s grace
            running = (await client.post("/v1/jobs", json=long_job)).json()["job_id"]
            queued = (await client.post("/v1/jobs", json={**JOB, "steps": 4})).json()["job_id"]
            streams = {j: asyncio.create_task(read_events(client, f"/v1/jobs/{j}/stream")) for j in (running, queued)}
            async with asyncio.timeout(30):
                while (await client.get(f"/v1/jobs/{running}")).json()["status"] != "running":
                    await asyncio.sleep(0.05)
                while (await client.get("/metrics")).text.count("sdworker_sse_watchers 2.0") == 0:
                    await asyncio.sleep(0.05)
            server.terminate()
            await asyncio.sleep(0.1)
            server.terminate()  # a second SIGTERM (supervisor + wrapper) must not cut the drain short
            await asyncio.sleep(0.4)  # within the 2 s grace: still listening, refusing work
            ready = await client.get("/ready")
            assert ready.status_code == 503 and ready.json()["ready"] is False
            refused = await client.post("/v1/jobs", json={**JOB, "steps": 2})
            assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
            results = {j: await asyncio.wait_for(task, 30) for j, task in streams.items()}
        for job_id, events in results.items():
            assert events[-2].name == "error" and events[-2].data["code"] == "shutting_down", (job_id, events[-2])
            assert events[-1].name == "end" and events[-1].data.startswith("[ERROR] the server is shutting down")
        assert "started" not in [e.name for e in results[queued]]
        code = await asyncio.to_thread(server.process.wait, 30)
        assert code == 0, server.log()
        assert "Traceback" not in server.log(), server.log()
    finally:
        server.stop()

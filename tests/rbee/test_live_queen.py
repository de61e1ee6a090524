"""rbee's hive starts a real ``sdworker serve`` process with its arguments; a small fake queen (a real
HTTP server here) receives its heartbeats in order - ``starting``, ``ready``, ``busy``, ``ready``,
``stopping`` - across one job (read by rbee's job client) and a SIGTERM. A queen that hangs changes
nothing: the worker serves, warns once, and exits 0 on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from live.server import LiveServer, free_port

from .rbee_client import stream_job_results
from .test_job_stream import RBEE_JOB

pytestmark = [pytest.mark.live, pytest.mark.slow]


class FakeQueen:
    """rbee's queen as far as heartbeats go: records every ``POST /v1/worker-heartbeat``."""

    def __init__(self) -> None:
        self.beats: list[dict[str, Any]] = []
        queen = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path == "/v1/worker-heartbeat":
                    queen.beats.append(json.loads(body))
                self.send_response(200 if self.path == "/v1/worker-heartbeat" else 404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="fake-queen", daemon=True)
        self.thread.start()

    def statuses(self) -> list[str]:
        """Statuses in arrival order, repeats (the periodic beats) folded."""
        folded: list[str] = []
        for beat in list(self.beats):
            status = beat["worker"]["status"]
            if not folded or folded[-1] != status:
                folded.append(status)
        return folded

    async def wait_for(self, statuses: list[str], timeout: float = 60.0) -> None:
        async with asyncio.timeout(timeout):
            while self.statuses()[: len(statuses)] != statuses:
                await asyncio.sleep(0.05)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def queen() -> Iterator[FakeQueen]:
    queen = FakeQueen()
    try:
        yield queen
    finally:
        queen.close()


def hive_args(queen_url: str) -> tuple[str, ...]:
    """With LiveServer's own ``--model demo --port P``: exactly what rbee's hive passes."""
    return ("--worker-id", "w1", "--device", "cpu", "--queen-url", queen_url, "--heartbeat-seconds", "2")


async def run_rbee_job(server: LiveServer) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        job = (await client.post("/v1/jobs", json={**RBEE_JOB, "steps": 4})).json()
        assert job["sse_url"] == f"/v1/jobs/{job['job_id']}/stream"
        lines: list[str] = []
        await stream_job_results(client, job["job_id"], lines.append)  # rbee's Ok(())
        assert lines[-1] == "[DONE]"
        return dict((await client.get(f"/v1/jobs/{job['job_id']}")).json())


async def test_beats_starting_ready_busy_ready_stopping(
    queen: FakeQueen, demo_cache_dir: Path, tmp_path: Path
) -> None:
    port = free_port()
    server = LiveServer(demo_cache_dir, port, *hive_args(queen.url), log_path=tmp_path / "log")
    try:
        await queen.wait_for(["starting"])
        await asyncio.to_thread(server.wait_ready)
        await queen.wait_for(["starting", "ready"])
        job = await run_rbee_job(server)
        assert job["status"] == "completed" and job["parameters"]["model"] == "demo"
        await queen.wait_for(["starting", "ready", "busy", "ready"])
        server.terminate()
        assert await asyncio.to_thread(server.process.wait, 60) == 0, server.log()
        assert queen.statuses() == ["starting", "ready", "busy", "ready", "stopping"], queen.beats
        assert [b["worker"]["status"] for b in queen.beats].count("stopping") == 1
        worker = queen.beats[-1]["worker"]
        assert worker == {
            "id": "w1", "model_id": "demo", "device": "cpu", "port": port, "status": "stopping",
            "implementation": "sdworker", "version": worker["version"],
        }
        assert "Traceback" not in server.log(), server.log()
    finally:
        server.stop()


async def test_a_queen_that_hangs_changes_nothing(demo_cache_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as hung:  # listens, never answers
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)
        url = f"http://127.0.0.1:{hung.getsockname()[1]}"
        server = LiveServer(demo_cache_dir, free_port(), *hive_args(url), log_path=tmp_path / "log")
        try:
            await asyncio.to_thread(server.wait_ready)
            assert (await run_rbee_job(server))["status"] == "completed"
            server.terminate()
            assert await asyncio.to_thread(server.process.wait, 60) == 0, server.log()
            log = server.log_path.read_text(errors="replace")
            # Beats every 2 s, all failing: one warning a minute (two if this machine is slow enough to
            # make the test outlast a minute), not one per beat.
            assert 1 <= log.count("heartbeat to the queen") <= 2, server.log()
        finally:
            server.stop()

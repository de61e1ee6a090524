"""A watcher that stops reading, over a real socket and real uvicorn (in-process, FakeEngine: this is
about flow control, not pixels): its stream is dropped after ``watcher_stall_seconds`` although it
never reads, and the job it watched completes for the watcher that reads (how fast, with and without a
stalled watcher, is bench/service.py's to measure, not a test's to assert)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import uvicorn

from sdworker.api.app import create_app
from sdworker.engine.fake import FakeEngine
from sdworker.settings import Settings

from .server import free_port
from .sse_client import read_events

pytestmark = [pytest.mark.live, pytest.mark.slow]

# 30 previews of 1024 px JPEG at quality 100: about 13 MB of frames, far above what the kernel's
# socket buffers hold (4 MB send + the stalled client's tiny receive buffer).
JOB = {
    "prompt": "x",
    "width": 1024,
    "height": 1024,
    "steps": 60,
    "preview": {"every": 2, "format": "jpeg", "quality": 100, "max_size": 1024, "min_interval_ms": 0},
}
STALL_SECONDS = 1.0


@pytest.fixture
def server() -> Iterator[tuple[str, FakeEngine, threading.Event]]:
    gate = threading.Event()
    engine = FakeEngine(load_gate=gate, step_seconds=0.02)
    port = free_port()
    settings = Settings(port=port, watcher_stall_seconds=STALL_SECONDS, shutdown_grace_seconds=5.0)
    uv = uvicorn.Server(uvicorn.Config(create_app(settings, engine), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", engine, gate
    finally:
        gate.set()
        uv.should_exit = True
        thread.join(30)


def read_until_eof(sock: socket.socket, timeout: float = 20.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


async def metric(client: httpx.AsyncClient, name: str) -> float:
    for line in (await client.get("/metrics")).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    raise AssertionError(name)


async def test_a_stalled_watcher_is_dropped_and_the_job_completes(
    server: tuple[str, FakeEngine, threading.Event],
) -> None:
    url, _, gate = server
    port = int(url.rsplit(":", 1)[1])
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        job_id = (await client.post("/v1/jobs", json=JOB)).json()["job_id"]
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", port))
        try:
            stalled.sendall(f"GET /v1/jobs/{job_id}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())  # never read
            reader = asyncio.create_task(read_events(client, f"/v1/jobs/{job_id}/stream"))
            async with asyncio.timeout(20):
                while (await client.get(f"/v1/jobs/{job_id}")).json()["watchers"] < 2:
                    await asyncio.sleep(0.02)
            gate.set()
            events = await asyncio.wait_for(reader, 120)
            assert [e.name for e in events[-2:]] == ["complete", "end"]
            # Dropped within the stall time (plus slack for a loaded machine), though it never read.
            async with asyncio.timeout(STALL_SECONDS + 10):
                while await metric(client, "sdworker_sse_streams_open") > 0:
                    await asyncio.sleep(0.05)
            assert (await client.get(f"/v1/jobs/{job_id}")).json()["watchers"] == 0
            # What it had been sent stops short of the end, and the server closed the connection.
            received = await asyncio.to_thread(read_until_eof, stalled)
            assert b"event: preview" in received and b"event: complete" not in received
        finally:
            stalled.close()

"""The socket edge over real uvicorn (``sdworker serve``): request heads are bounded in size and in
read time, so slowloris connections and a 64 MiB header line cannot hold the service, while a long
SSE stream (head complete) is never cut by the head deadline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from .server import LiveServer, free_port

pytestmark = [pytest.mark.live, pytest.mark.slow]

HEAD_TIMEOUT_SECONDS = 2.0
TRICKLERS = 2000
LONG = {"prompt": "a red cube", "steps": 150, "width": 256, "height": 256, "preview": {"every": 0}}


@pytest.fixture(scope="module")
def edge_server(demo_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log_path = tmp_path_factory.mktemp("edge") / "server.log"
    server = LiveServer(demo_cache_dir, free_port(), "--header-timeout-seconds", str(HEAD_TIMEOUT_SECONDS),
                        log_path=log_path)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(edge_server: LiveServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=edge_server.url, timeout=30) as client:
        yield client


async def _trickle(port: int, opened: list[int]) -> None:
    """Open a connection and send a request head one byte every 0.5 s, until the server closes it."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    opened.append(1)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        while True:
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                if await asyncio.wait_for(reader.read(1024), 0.5) == b"":
                    return
            writer.write(b"a")
    except (ConnectionError, OSError):
        return
    finally:
        writer.close()


async def test_connections_trickling_headers_are_closed(edge_server: LiveServer, client: httpx.AsyncClient) -> None:
    opened: list[int] = []
    tasks = [asyncio.create_task(_trickle(edge_server.port, opened)) for _ in range(TRICKLERS)]
    try:
        async with asyncio.timeout(60):
            while len(opened) < TRICKLERS * 0.9:
                await asyncio.sleep(0.05)
        # While they trickle, the service answers (on a new connection: a pooled keep-alive one may have
        # been closed by the server's idle deadline meanwhile, which is the server doing its job).
        assert (await _health(client)).status_code == 200
        # Every one is closed by the server (a liveness bound, not a timing assertion): without the
        # head deadline they would trickle forever and this would time out.
        async with asyncio.timeout(120):
            await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
    assert (await _health(client)).status_code == 200


async def _health(client: httpx.AsyncClient) -> httpx.Response:
    async with httpx.AsyncClient(base_url=str(client.base_url), timeout=30) as fresh:  # no pooled connection
        return await fresh.get("/health")


async def _send_bomb(port: int) -> tuple[int, bytes]:
    """A 64 MiB header line; returns the bytes the server took before refusing, and its answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    sent = 0
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Bomb: ")
        chunk = b"a" * (1024 * 1024)
        for _ in range(64):
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
    except (ConnectionError, OSError):
        pass
    answer = b""
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        answer = await asyncio.wait_for(reader.read(4096), 10)
    writer.close()
    return sent, answer


async def test_a_64_mib_header_line_is_cut_off_and_health_answers(
    edge_server: LiveServer, client: httpx.AsyncClient
) -> None:
    bomb = asyncio.create_task(_send_bomb(edge_server.port))
    for _ in range(5):
        assert (await client.get("/health")).status_code == 200
    sent, answer = await bomb
    # The server stopped reading at its head limit (64 KiB) and closed: the write failed part-way,
    # or what it answered is a 400 (the kernel may have buffered the rest).
    assert sent < 64 * 1024 * 1024 or answer.startswith(b"HTTP/1.1 400"), (sent, answer[:100])
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:100]
    assert (await client.get("/health")).status_code == 200


async def test_a_stream_outlives_the_head_deadline(client: httpx.AsyncClient) -> None:
    job_id = (await client.post("/v1/jobs", json=LONG)).json()["job_id"]
    try:
        seen: list[str] = []
        async with client.stream("GET", f"/v1/jobs/{job_id}/stream") as response:
            assert response.status_code == 200
            loop = asyncio.get_running_loop()
            started = loop.time()
            async for line in response.aiter_lines():
                if line.startswith("event:"):
                    seen.append(line)
                if loop.time() - started > HEAD_TIMEOUT_SECONDS * 2 and len(seen) > 2:
                    break  # events still arrive after twice the head deadline: the stream was not cut
        assert seen
    finally:
        await client.delete(f"/v1/jobs/{job_id}")


async def test_head_host_and_a_keep_alive_connection_over_a_real_socket(
    edge_server: LiveServer, client: httpx.AsyncClient
) -> None:
    head = await client.head("/v1/info")
    assert head.status_code == 200 and head.content == b"" and int(head.headers["content-length"]) > 0
    refused = await client.get("/v1/jobs/", headers={"Host": "evil.example"})
    assert refused.status_code == 400 and "location" not in refused.headers
    # Two requests on one keep-alive connection, the second after the head deadline has passed.
    reader, writer = await asyncio.open_connection("127.0.0.1", edge_server.port)
    try:
        for _ in range(2):
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 200"), head
            lines = head.split(b"\r\n")
            length = next(int(line.split(b":")[1]) for line in lines if line.lower().startswith(b"content-length"))
            await asyncio.wait_for(reader.readexactly(length), 10)  # the whole answer, so the next starts clean
            await asyncio.sleep(HEAD_TIMEOUT_SECONDS * 0.75)
    finally:
        writer.close()

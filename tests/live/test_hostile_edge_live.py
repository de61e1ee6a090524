"""What the hostile-client run found at the socket and in the logs, over one real server (issue 20):

- request bodies have a deadline (fault 7): a chunked POST that stops mid-body and a POST trickling a
  byte at a time against a large Content-Length are answered ``408 request_timeout`` and closed,
  instead of being held forever;
- the access log shows a signed URL's path without its token (fault 8);
- a keys file re-read on SIGHUP is held to the start-up rule: ``abc`` never becomes a key (fault 9).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .server import LiveServer, free_port

pytestmark = [pytest.mark.live]

CONNECTIONS = 20
KEY = "hostile-live-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys"
    path.write_text(KEY + "\n")
    return path


@pytest.fixture(scope="module")
def body_server(
    demo_cache_dir: Path, keys_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    log_path = tmp_path_factory.mktemp("body") / "server.log"
    server = LiveServer(demo_cache_dir, free_port(), "--body-timeout-seconds", "1", "--body-min-rate-bytes", "1000",
                        "--api-keys-file", str(keys_file), log_path=log_path)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


# With the key: a request without one is answered 401 before its body is read.
HEAD = f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"


async def _unfinished(port: int, chunked: bool) -> bytes:
    """Send part of a body, then either nothing more (chunked) or a byte every 0.3 s (Content-Length:
    100000); return everything the server answered until it closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        if chunked:
            writer.write((HEAD + "Transfer-Encoding: chunked\r\n\r\n" + "5\r\n{\"pro\r\n").encode())
        else:
            writer.write((HEAD + "Content-Length: 100000\r\n\r\n{").encode())
        answer = b""
        while True:
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                data = await asyncio.wait_for(reader.read(65536), 0.3)
                if data == b"":
                    return answer  # the server closed the connection
                answer += data
            if not chunked:
                writer.write(b" ")
    except (ConnectionError, OSError):
        return answer
    finally:
        writer.close()


async def test_unfinished_and_trickling_bodies_are_answered_408_and_closed(body_server: LiveServer) -> None:
    tasks = [asyncio.create_task(_unfinished(body_server.port, chunked=index % 2 == 0)) for index in range(CONNECTIONS)]
    async with httpx.AsyncClient(base_url=body_server.url, timeout=30) as client:
        assert (await client.get("/health")).status_code == 200
        # A liveness bound, not a timing assertion: without a body deadline these never end.
        async with asyncio.timeout(60):
            answers = await asyncio.gather(*tasks)
        for answer in answers:
            head, _, body = answer.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 408"), answer[:200]
            assert json.loads(body)["error"]["code"] == "request_timeout"
        # A body that arrives in time is served as before.
        job = await client.post("/v1/jobs", json={"prompt": "a", "steps": 1}, headers=AUTH)
        assert job.status_code == 202, job.text


async def test_the_access_log_shows_signed_urls_without_their_token(body_server: LiveServer) -> None:
    async with httpx.AsyncClient(base_url=body_server.url, timeout=30) as client:
        job = (await client.post("/v1/jobs", json={"prompt": "a", "steps": 1, "width": 64, "height": 64},
                                 headers=AUTH)).json()
        stream = await client.get(job["sse_url"])  # the token is the key; the stream ends with the job
        assert stream.status_code == 200
        token = job["sse_url"].split("token=")[1]
        async with asyncio.timeout(30):
            while f"/v1/jobs/{job['job_id']}/stream?token=" not in body_server.log():
                await asyncio.sleep(0.1)
        whole_log = body_server.log_path.read_text(errors="replace")
        assert token not in whole_log and "token=<redacted>" in whole_log


async def test_a_sighup_reload_of_a_short_key_keeps_the_old_keys(body_server: LiveServer, keys_file: Path) -> None:
    async with httpx.AsyncClient(base_url=body_server.url, timeout=30) as client:
        keys_file.write_text("abc\n")
        body_server.process.send_signal(signal.SIGHUP)
        async with asyncio.timeout(30):
            while "API keys not reloaded" not in body_server.log():
                await asyncio.sleep(0.1)
        assert (await client.get("/v1/info", headers={"Authorization": "Bearer abc"})).status_code == 401
        assert (await client.get("/v1/info", headers=AUTH)).status_code == 200
        keys_file.write_text(KEY + "\n")

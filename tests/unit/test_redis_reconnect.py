"""After a Redis restart the first command on a pooled connection succeeds (issue 20, fault 10):
before, every API node answered its first request with a 503 (a stale pooled connection)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdworker.stores.redis.connection import connect
from tests.redis_server import RedisServer


async def test_the_first_command_after_a_redis_restart_succeeds(tmp_path: Path) -> None:
    if not RedisServer.available():
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path / "redis")
    server.start()
    client = connect(server.url, name="reconnect-test")
    try:
        await client.set("kept", "1")
        assert await client.get("kept") == b"1"  # the pool now holds a connection
        server.stop()
        server.start()  # same port and folder: the append-only file brings the key back
        assert await client.get("kept") == b"1"
        assert await client.incr("counter") == 1  # and a write, once
    finally:
        await client.aclose()
        server.stop()

"""Every API test runs three times: on the memory store, the SQLite store (a real file in a temporary
folder) and the Redis backend (a real redis-server), so they cannot drift. Where they rightly differ
the test asks ``backend_name()`` and says why."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.redis_server import RedisServer

from . import helpers


@pytest.fixture(params=["memory", "sqlite", "redis"], autouse=True)
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        helpers.BACKEND.update(name="redis", url=server.url)
    else:
        helpers.BACKEND.update(name=request.param, url=None)
    try:
        yield request.param
    finally:
        helpers.BACKEND.update(name="memory", url=None)

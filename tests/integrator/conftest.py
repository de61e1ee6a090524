"""The integrator contract (webhooks, deadlines, sync mode) on every store: memory, a real SQLite file and
a real redis-server (an API node and a worker in one app), as tests/api does."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api import helpers
from tests.redis_server import RedisServer


@pytest.fixture(params=["memory", "sqlite", "redis"])
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

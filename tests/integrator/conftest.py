"""The integrator contract (webhooks, deadlines, sync mode) on the one-process stores: memory and a real
SQLite file. (A Redis fleet refuses webhooks and deadlines with a 400 so far: test_redis_refuses.py.)"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.api import helpers


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    helpers.BACKEND.update(name=request.param, url=None)
    try:
        yield request.param
    finally:
        helpers.BACKEND.update(name="memory", url=None)

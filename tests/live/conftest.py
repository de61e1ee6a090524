"""Live servers: real uvicorn subprocesses serving the demo model built once by tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .server import LiveServer, free_port

# Small queue so the 429 test can fill it quickly; a body limit (64 KiB) that the docs examples with
# images stay under and the bad-input case goes over; everything else is the default.
SHARED_ARGS = ("--max-queue", "3", "--max-body-bytes", "65536", "--preview-min-interval-ms", "0")


@pytest.fixture(scope="session")
def live_server(demo_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log_path = tmp_path_factory.mktemp("live") / "server.log"
    server = LiveServer(demo_cache_dir, free_port(), *SHARED_ARGS, log_path=log_path)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()

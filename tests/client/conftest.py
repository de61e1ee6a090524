"""One live server (real uvicorn, demo model) for every client test, and helpers that leave it idle.

A small queue (``--max-queue 2``) so the 429 tests fill it with three jobs; previews as often as
asked (``--preview-min-interval-ms 0``), so a test sees one per step.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live.server import LiveServer, free_port

from .proxy import TcpProxy

SERVER_ARGS = ("--max-queue", "2", "--preview-min-interval-ms", "0")

# Small and quick: the demo model does a 64 px step in milliseconds.
JOB: dict[str, Any] = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 3, "seed": 7, "scheduler": "euler"}
# Runs for many seconds unless cancelled.
LONG: dict[str, Any] = {**JOB, "steps": 150, "width": 256, "height": 256, "preview": {"every": 0}}


@pytest.fixture(scope="session")
def server(demo_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log_path = tmp_path_factory.mktemp("client-live") / "server.log"
    live = LiveServer(demo_cache_dir, free_port(), *SERVER_ARGS, log_path=log_path)
    try:
        live.wait_ready()
        yield live
    finally:
        live.stop()


@pytest.fixture
def url(server: LiveServer) -> Iterator[str]:
    """The server's URL; after the test, every unfinished job is cancelled and awaited."""
    yield server.url
    leave_idle(server.url)


def leave_idle(url: str, timeout: float = 30.0) -> None:
    with httpx.Client(base_url=url, timeout=timeout) as http:
        for job in http.get("/v1/jobs").json()["jobs"]:
            if job["status"] in ("queued", "running"):
                http.delete(f"/v1/jobs/{job['job_id']}")
        wait_for(lambda: all(j["status"] not in ("queued", "running") for j in http.get("/v1/jobs").json()["jobs"]),
                 timeout)


def wait_for(predicate: Any, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met")
        time.sleep(0.05)


def job_status(url: str, job_id: str) -> str:
    return str(httpx.get(f"{url}/v1/jobs/{job_id}", timeout=10).json()["status"])


@pytest.fixture
def proxy(server: LiveServer) -> Iterator[TcpProxy]:
    tcp = TcpProxy(server.port)
    yield tcp
    tcp.close()

"""One real uvicorn server (demo model) per test module, and helpers shared by the compat tests."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from live.server import LiveServer, free_port
from PIL import Image

SERVER_ARGS = ("--max-queue", "2", "--max-images", "4", "--preview-min-interval-ms", "0")


@pytest.fixture(scope="module")
def server(demo_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    log_path = tmp_path_factory.mktemp("compat") / "server.log"
    live = LiveServer(demo_cache_dir, free_port(), *SERVER_ARGS, log_path=log_path)
    try:
        live.wait_ready()
        yield live
    finally:
        live.stop()


@pytest.fixture
def http(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client
        cancel_all(client)


def cancel_all(client: httpx.Client) -> None:
    """Leave the server idle for the next test."""
    for job in client.get("/v1/jobs").json()["jobs"]:
        if job["status"] in ("queued", "running"):
            client.delete(f"/v1/jobs/{job['job_id']}")


def native_pixels(client: httpx.Client, **body: Any) -> np.ndarray:
    """The first image of a native ``/v1/jobs`` job with these settings."""
    job_id = client.post("/v1/jobs", json=body).json()["job_id"]
    while (status := client.get(f"/v1/jobs/{job_id}").json()["status"]) not in ("completed", "failed", "cancelled"):
        pass
    assert status == "completed"
    return pixels(client.get(f"/v1/jobs/{job_id}/image").content)


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def png(width: int, height: int, color: tuple[int, ...] = (200, 120, 40), mode: str = "RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def start_long_job(client: httpx.Client) -> str:
    """A native job that runs for many seconds (cancelled by the ``http`` fixture)."""
    body = {"prompt": "long", "steps": 150, "width": 256, "height": 256, "preview": {"every": 0}}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])

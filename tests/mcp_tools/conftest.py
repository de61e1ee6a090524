"""A real uvicorn serving the real app with the FakeEngine, with API keys on: MCP streams its
progress over Streamable HTTP, which an in-process ASGI client would buffer whole."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace

import httpx
import pytest
import uvicorn

from sdworker.api.app import create_app
from sdworker.domain.catalog import ModelInfo
from sdworker.engine.fake import FakeEngine
from sdworker.settings import Settings
from tests.live.server import free_port

KEY = "mcp-test-key-alice"
OTHER_KEY = "mcp-test-key-bob"
# Slow enough that a 200-step job is still running when the test cancels it; a 3-step job is quick.
STEP_SECONDS = 0.03


@dataclass
class Worker:
    url: str
    engine: FakeEngine

    @property
    def mcp_url(self) -> str:
        return self.url + "/mcp"

    async def job(self, job_id: str, key: str = KEY) -> dict[str, object]:
        async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=10) as http:
            response = await http.get(f"{self.url}/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def wait_status(self, job_id: str, *statuses: str, timeout: float = 20.0) -> dict[str, object]:
        """Polls without blocking the event loop: the MCP client shares it (a cancel is sent from it)."""
        deadline = time.monotonic() + timeout
        while (job := await self.job(job_id))["status"] not in statuses:
            assert time.monotonic() < deadline, f"job {job_id} is {job['status']}, not {statuses}"
            await asyncio.sleep(0.05)
        return job


class EditFakeEngine(FakeEngine):
    """The fake library plus ``kontext``, listed as an edit model (``variant``), as FLUX.1 Kontext is, and
    ``klein``, a FLUX.2 klein (an edit model that also generates)."""

    def list_models(self) -> tuple[ModelInfo, ...]:
        kinds = {"kontext": ("flux1", "kontext"), "klein": ("flux2", "klein")}
        return tuple(replace(m, family=kinds[m.name][0], variant=kinds[m.name][1]) if m.name in kinds else m
                     for m in super().list_models())


@pytest.fixture(scope="module")
def worker() -> Iterator[Worker]:
    engine = EditFakeEngine(models=("fake", "kontext", "klein"), step_seconds=STEP_SECONDS)
    port = free_port()
    settings = Settings(port=port, api_keys=(KEY, OTHER_KEY), shutdown_grace_seconds=5.0, preview_min_interval_ms=0)
    server = uvicorn.Server(uvicorn.Config(create_app(settings, engine), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if server.started and httpx.get(url + "/ready", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    else:
        raise TimeoutError("the worker did not become ready")
    try:
        yield Worker(url, engine)
    finally:
        server.should_exit = True
        thread.join(30)

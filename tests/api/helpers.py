"""The real app over HTTP (httpx + ASGITransport, lifespan run for real) with the FakeEngine."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from fastapi import FastAPI
from PIL import Image

from sdworker.api.app import create_app
from sdworker.engine.fake import FakeEngine
from sdworker.jobs.metrics import ServiceMetrics
from sdworker.jobs.progress import EncodeFn
from sdworker.settings import Settings
from sdworker.stores.redis.service import RedisJobService
from sdworker.stores.redis.source import RedisJobSource
from sdworker.stores.sqlite import SqliteStore

SMALL = {"steps": 3, "width": 64, "height": 64, "seed": 7}


@dataclass
class Running:
    client: httpx.AsyncClient
    app: FastAPI
    engine: FakeEngine

    async def submit(self, **body: Any) -> str:
        response = await self.client.post("/v1/jobs", json={"prompt": "a cat", **SMALL, **body})
        assert response.status_code == 202, response.text
        return str(response.json()["job_id"])

    async def status(self, job_id: str) -> dict[str, Any]:
        response = await self.client.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def wait_status(self, job_id: str, *statuses: str, timeout: float = 10.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while (status := await self.status(job_id))["status"] not in statuses:
                await asyncio.sleep(0.01)
        return status

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        async with asyncio.timeout(timeout):
            while not await predicate():
                await asyncio.sleep(0.01)


# Which job backend ``running_app`` builds: set per test by the ``backend`` fixture (tests/api/conftest.py),
# so every test here runs against the memory store, a real SQLite file and a real redis-server.
BACKEND: dict[str, Any] = {"name": "memory", "url": None}

# Short lease and claim times, so failure tests take seconds (production defaults are 5 s and 30 s).
REDIS_TEST_SETTINGS = {"lease_heartbeat_seconds": 0.5, "claim_idle_seconds": 3.0}


def backend_name() -> str:
    return str(BACKEND["name"])


@asynccontextmanager
async def running_app(
    engine: FakeEngine | None = None, *, encode: EncodeFn | None = None, wait_ready: bool = True, **overrides: Any
) -> AsyncIterator[Running]:
    base: dict[str, Any] = {"preview_min_interval_ms": 0, "shutdown_grace_seconds": 5.0}
    if BACKEND["name"] == "redis":
        base |= {"redis_url": BACKEND["url"], "redis_prefix": f"t{uuid.uuid4().hex[:10]}", **REDIS_TEST_SETTINGS}
    settings = Settings(**{**base, **overrides})
    engine = engine or FakeEngine()
    if settings.redis_url:
        metrics = ServiceMetrics()
        app = create_app(
            settings,
            engine,
            service=RedisJobService(settings, metrics),
            source=RedisJobSource(settings, metrics=metrics),
            metrics=metrics,
            encode=encode,
        )
    elif BACKEND["name"] == "sqlite":
        data_dir = Path(tempfile.mkdtemp(prefix="sdw-sqlite-"))
        app = create_app(settings, engine, encode=encode, store=SqliteStore(data_dir))
    else:
        app = create_app(settings, engine, encode=encode)
    try:
        async with _serving(app, settings, engine, wait_ready) as running:
            yield running
    finally:
        if BACKEND["name"] == "sqlite":
            shutil.rmtree(data_dir, ignore_errors=True)


@asynccontextmanager
async def _serving(app: FastAPI, settings: Settings, engine: FakeEngine, wait_ready: bool) -> AsyncIterator[Running]:
    async with app.router.lifespan_context(app):
        # Like a real server, answer an unhandled error with a 500 instead of raising it into the test.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:7833") as client:
            running = Running(client, app, engine)
            if wait_ready:
                await running.wait_for(lambda: _is_ready(client))
            elif settings.redis_url:
                # A fleet routes a job only to a model some worker has announced (else 404
                # model_not_found, rightly); the memory backend has its one model from the start.
                await running.wait_for(lambda: _has_worker(app))
            yield running


async def _has_worker(app: FastAPI) -> bool:
    return bool((await app.state.service.fleet(fresh=True)).workers)


async def _is_ready(client: httpx.AsyncClient) -> bool:
    return (await client.get("/ready")).status_code == 200


def parse_sse(text: str) -> list[tuple[int, str, Any]]:
    """(id, event, data) of every event frame; comments and `retry:` lines are skipped. The data is
    the parsed JSON, except for the closing `end` event, whose data is rbee's marker as a string. A
    `notice` has no id (it is not part of the job's history): 0 here."""
    events = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":") and ": " in line:
                key, value = line.split(": ", 1)
                fields[key] = value
        if "event" in fields:
            data = fields["data"] if fields["event"] == "end" else json.loads(fields["data"])
            events.append((int(fields.get("id", 0)), fields["event"], data))
    return events


def png_b64(width: int, height: int, mode: str = "RGB") -> str:
    buffer = io.BytesIO()
    Image.new(mode, (width, height), 200).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()

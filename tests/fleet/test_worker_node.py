"""``sdworker worker`` honours its own flags (issue #21): a real worker process on a real redis-server,
behind a real ``sdworker api`` node.

The worker runs with ``--health-port`` (``/health``, ``/ready``), ``--queen-url`` (rbee's heartbeats
to a stub queen in this process), ``--max-pixels`` 4096 (64x64: the API node accepts 128x128 when a
bigger worker of the model registered) and preview flags unlike the API node's defaults (every 2nd step, PNG)."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from tests.live.server import free_port
from tests.redis_server import RedisServer

from .procs import ApiNode, Worker, wait_until, workers_ready
from .stream import Watcher, job, until, watch

pytestmark = pytest.mark.live

PNG_MAGIC = b"\x89PNG"


class StubQueen:
    """rbee's queen as far as heartbeats go: records each ``POST /v1/worker-heartbeat`` body."""

    def __init__(self) -> None:
        self.beats: list[dict[str, Any]] = []
        beats = self.beats

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                beats.append({"path": self.path, **json.loads(body)})
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def statuses(self) -> list[str]:
        return [beat["worker"]["status"] for beat in self.beats]


class Node:
    def __init__(self, api: ApiNode, worker: Worker, health: str, queen: StubQueen, redis_url: str,
                 prefix: str) -> None:
        self.api, self.worker, self.health, self.queen = api, worker, health, queen
        self.redis_url, self.prefix = redis_url, prefix


@pytest.fixture(scope="module")
def node(redis_server: RedisServer, demo_cache_dir: Path, tmp_path: Path) -> Iterator[Node]:
    prefix = f"node{uuid.uuid4().hex[:8]}"
    queen = StubQueen()
    health_port = free_port()
    api = ApiNode(redis_server.url, prefix, cache_dir=demo_cache_dir, log_path=tmp_path / "api.log",
                  extra=("--max-steps", "3000"))
    worker = Worker(
        redis_server.url, prefix, "probe-1", cache_dir=demo_cache_dir, log_path=tmp_path / "worker.log",
        extra=("--health-port", str(health_port), "--queen-url", queen.url, "--heartbeat-seconds", "1",
               "--max-pixels", "4096", "--preview-every", "2", "--preview-format", "png",
               "--shutdown-grace-seconds", "1"),
    )
    try:
        api.wait_up()
        wait_until(lambda: workers_ready(api.url, {"probe-1"}), 120, worker.log, worker)
        yield Node(api, worker, f"http://127.0.0.1:{health_port}", queen, redis_server.url, prefix)
    finally:
        worker.stop() if worker.alive() else worker.kill()
        api.stop()
        queen.server.shutdown()


@pytest.fixture(scope="module")
def tmp_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("worker-node")


def _body(size: int, steps: int, preview: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"prompt": "a lighthouse", "steps": steps, "seed": 5, "width": size, "height": size,
            **({"preview": preview} if preview is not None else {})}


async def _post(client: httpx.AsyncClient, base: str, body: dict[str, Any]) -> str:
    response = await client.post(f"{base}/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


async def _run(client: httpx.AsyncClient, base: str, body: dict[str, Any]) -> tuple[str, Watcher]:
    """Submit a job and read its whole stream. The job waits behind a blocker until the watcher is
    subscribed: a worker decodes no preview while nobody watches."""
    blocker = await _post(client, base, _body(64, 3000, {"every": 0}))
    job_id = await _post(client, base, body)
    watcher = Watcher()
    reading = asyncio.create_task(watch(client, f"{base}/v1/jobs/{job_id}/stream", watcher))
    await until(lambda: _has_events(watcher), what="the watcher subscribed")
    assert (await client.delete(f"{base}/v1/jobs/{blocker}")).status_code in (200, 202)
    await asyncio.wait_for(reading, 120)
    return job_id, watcher


async def _has_events(watcher: Watcher) -> bool:
    return bool(watcher.events)


def test_the_health_port_answers_health_and_ready_once_the_worker_claims(node: Node) -> None:
    health = httpx.get(node.health + "/health", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "healthy"
    ready = httpx.get(node.health + "/ready", timeout=5)
    assert ready.status_code == 200, ready.text
    assert ready.json()["ready"] is True
    assert httpx.get(node.health + "/v1/jobs", timeout=5).status_code == 404  # probes only, no API


def test_the_worker_sends_rbee_heartbeats_to_its_queen(node: Node) -> None:
    wait_until(lambda: "ready" in node.queen.statuses(), 30, lambda: str(node.queen.beats))
    beat = node.queen.beats[-1]
    assert beat["path"] == "/v1/worker-heartbeat"
    assert beat["worker"]["id"] == "probe-1" and beat["worker"]["port"] == int(node.health.rsplit(":", 1)[1])
    assert node.queen.statuses()[0] == "starting"


def test_an_oversize_job_fails_with_too_large_and_the_worker_keeps_serving(node: Node) -> None:
    # The API node accepts what the largest registered worker of the model takes (scale to zero keeps a
    # day of registrations): a bigger worker registered today and gone now lets the 128x128 job through,
    # and this 64x64 worker is the one that claims it.
    client = redis.Redis.from_url(node.redis_url)
    record = json.loads(client.hget(f"{node.prefix}:registered", "probe-1") or b"{}")
    record["id"], record["limits"]["max_pixels"] = "big-gone", 1024 * 1024
    client.hset(f"{node.prefix}:registered", "big-gone", json.dumps(record))
    client.close()

    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            job_id, watcher = await _run(client, node.api.url, _body(128, 2, {"every": 0}))
            assert watcher.names()[-2:] == ["error", "end"], watcher.names()
            error = watcher.events[-2].data
            assert error["code"] == "too_large" and "4096" in error["message"], error
            view = await job(client, node.api.url, job_id)
            assert view["status"] == "failed" and view["error"]["code"] == "too_large", view
            # The same worker runs the next job.
            job_id, watcher = await _run(client, node.api.url, _body(64, 2, {"every": 0}))
            assert watcher.names()[-2:] == ["complete", "end"], watcher.names()
            assert (await job(client, node.api.url, job_id))["worker"] == "probe-1"

    asyncio.run(scenario())
    assert node.worker.alive()
    assert httpx.get(node.health + "/ready", timeout=5).status_code == 200


def test_the_worker_preview_flags_shape_the_previews_its_jobs_stream(node: Node) -> None:
    async def scenario() -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            # Nothing asked: the worker's --preview-every 2 --preview-format png (the API node's
            # defaults would be every step, JPEG).
            _, watcher = await _run(client, node.api.url, _body(64, 7))  # no preview on the last step
            previews = [e.data for e in watcher.events if e.name == "preview"]
            assert [p["step"] for p in previews] == [2, 4, 6], previews
            assert {p["format"] for p in previews} == {"png"}
            assert all(base64.b64decode(p["image"]).startswith(PNG_MAGIC) for p in previews)
            # What the client asked wins over the worker's flags, field by field. (Not step 1: a
            # fleet worker learns that somebody watches at its lease's first heartbeat.)
            _, watcher = await _run(client, node.api.url, _body(64, 7, {"every": 3, "min_interval_ms": 0}))
            previews = [e.data for e in watcher.events if e.name == "preview"]
            assert [p["step"] for p in previews] == [3, 6] and {p["format"] for p in previews} == {"png"}

    asyncio.run(scenario())


def test_sigterm_makes_ready_503_then_the_worker_exits_0(node: Node) -> None:
    # Last: it stops the module's worker.
    async def long_job() -> str:
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(f"{node.api.url}/v1/jobs", json=_body(64, 3000, {"every": 0}))
            job_id = str(response.json()["job_id"])

            async def running() -> bool:
                return (await job(client, node.api.url, job_id))["status"] == "running"

            await until(running, what="the long job running")
            return job_id

    job_id = asyncio.run(long_job())
    node.worker.signal(signal.SIGTERM)
    wait_until(lambda: _ready_status(node.health) in (503, None), 10, node.worker.log)
    assert node.worker.process.wait(30) == 0, node.worker.log()
    assert "stopping" in node.queen.statuses()
    # The running job was handed back to the queue, not lost.
    view = httpx.get(f"{node.api.url}/v1/jobs/{job_id}", timeout=5).json()
    assert view["status"] == "queued", view


def _ready_status(url: str) -> int | None:
    try:
        return httpx.get(url + "/ready", timeout=2).status_code
    except httpx.TransportError:
        return None

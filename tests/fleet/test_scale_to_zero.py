"""Scale to zero, with real ``sdworker api`` and ``sdworker worker`` processes on a real redis-server:
a job for a model whose only worker stopped is accepted, checked against the limits that worker
registered, waits, and runs when a new worker starts; with no worker at all, a job for an expected
model ends ``no_worker`` after ``--queue-timeout-seconds`` and frees its ``--max-queue`` place. The
per-model gauges an autoscaler reads are on ``/metrics``."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.redis_server import RedisServer

from .procs import ApiNode, Worker, wait_until, workers_ready

pytestmark = pytest.mark.live

JOB = {"prompt": "a lighthouse", "model": "demo", "steps": 2, "width": 64, "height": 64, "seed": 5,
       "preview": {"every": 0}}


def _status(api: ApiNode, job_id: str) -> dict:
    return httpx.get(f"{api.url}/v1/jobs/{job_id}", timeout=10).json()


def _gauge(api: ApiNode, name: str, model: str) -> float | None:
    text = httpx.get(f"{api.url}/metrics", timeout=10).text
    match = re.search(rf'^{name}{{model="{model}"}} (\S+)$', text, re.M)
    return float(match.group(1)) if match else None


def test_with_no_worker_a_job_ends_no_worker_after_the_timeout_and_frees_its_place(
    redis_server: RedisServer, demo_cache_dir: Path, tmp_path: Path
) -> None:
    api = ApiNode(redis_server.url, f"z{uuid.uuid4().hex[:8]}", cache_dir=demo_cache_dir, log_path=tmp_path / "api.log",
                  extra=("--expect-models", "demo", "--queue-timeout-seconds", "2", "--max-queue", "1"))
    try:
        api.wait_up()
        first = httpx.post(f"{api.url}/v1/jobs", json=JOB, timeout=10)
        assert first.status_code == 202, first.text
        job_id = first.json()["job_id"]
        full = httpx.post(f"{api.url}/v1/jobs", json=JOB, timeout=10)
        assert full.status_code == 429, full.text
        wait_until(lambda: (_gauge(api, "sdworker_model_queue_depth", "demo") or 0) >= 1, 10, api.log)
        assert (_gauge(api, "sdworker_model_oldest_queued_seconds", "demo") or 0) > 0
        wait_until(lambda: _status(api, job_id)["status"] == "failed", 20, api.log)
        view = _status(api, job_id)
        assert view["error"]["code"] == "no_worker", view
        # The place in --max-queue is free again; and a size above a CPU's default limit is taken: an
        # API node (on a CPU here) does not judge jobs by its own device.
        again = httpx.post(f"{api.url}/v1/jobs", json={**JOB, "width": 1088, "height": 1088}, timeout=10)
        assert again.status_code == 202, again.text
        wait_until(lambda: _gauge(api, "sdworker_model_queue_depth", "demo") == 1, 10, api.log)
    finally:
        api.stop()


def test_a_job_for_a_stopped_workers_model_waits_then_runs_on_a_new_worker(
    redis_server: RedisServer, demo_cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = f"z{uuid.uuid4().hex[:8]}"
    # The workers' own limit (64x64), smaller than the API node's: the node checks the worker's.
    monkeypatch.setenv("SDWORKER_MAX_PIXELS", str(64 * 64))
    first = Worker(redis_server.url, prefix, "z1", cache_dir=demo_cache_dir, log_path=tmp_path / "w1.log")
    monkeypatch.delenv("SDWORKER_MAX_PIXELS")
    api = ApiNode(redis_server.url, prefix, cache_dir=demo_cache_dir, log_path=tmp_path / "api.log")
    second = None
    try:
        api.wait_up()
        wait_until(lambda: workers_ready(api.url, {"z1"}), 120, first.log)
        assert first.stop() == 0
        wait_until(lambda: httpx.get(f"{api.url}/v1/workers", timeout=5).json()["workers"] == [], 30, api.log)
        big = httpx.post(f"{api.url}/v1/jobs", json={**JOB, "width": 128, "height": 128}, timeout=10)
        assert big.status_code == 422 and big.json()["error"]["field"] == "width", big.text
        accepted = httpx.post(f"{api.url}/v1/jobs", json=JOB, timeout=10)
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        time.sleep(1.5)
        assert _status(api, job_id)["status"] == "queued"
        second = Worker(redis_server.url, prefix, "z2", cache_dir=demo_cache_dir, log_path=tmp_path / "w2.log")
        wait_until(lambda: _status(api, job_id)["status"] == "completed", 180, second.log)
        assert httpx.get(f"{api.url}/v1/jobs/{job_id}/image", timeout=10).status_code == 200
    finally:
        for proc in (second, first, api):
            if proc is not None:
                proc.stop() if proc.alive() else proc.kill()

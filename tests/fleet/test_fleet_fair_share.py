"""Priorities and fair share on a Redis fleet of real processes: one ``sdworker api`` node with a TOML
keys file and two ``sdworker worker`` processes on the demo model, on a real redis-server. Key A
queues 8 jobs, then key B 2, then key C (priority 5) 1: C's starts next, then B's first, before A's
third; the positions the API showed were that order."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest

from tests.redis_server import RedisServer

from .procs import ApiNode, Worker, wait_until

pytestmark = pytest.mark.live

A, B, C = "fleet-fair-key-a-0123456789", "fleet-fair-key-b-0123456789", "fleet-fair-key-c-0123456789"
KEYS = f'[[keys]]\nkey = "{A}"\n\n[[keys]]\nkey = "{B}"\n\n[[keys]]\nkey = "{C}"\npriority = 5\n'
JOB = {"prompt": "a lighthouse", "model": "demo", "width": 64, "height": 64, "preview": {"every": 0}}


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _post(api: ApiNode, key: str, **fields: object) -> str:
    response = httpx.post(f"{api.url}/v1/jobs", json={**JOB, **fields}, headers=_auth(key), timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def _view(api: ApiNode, key: str, job_id: str) -> dict:
    return httpx.get(f"{api.url}/v1/jobs/{job_id}", headers=_auth(key), timeout=10).json()


def _ready(api: ApiNode, ids: set[str]) -> bool:
    try:
        workers = httpx.get(f"{api.url}/v1/workers", headers=_auth(A), timeout=5).json()["workers"]
    except (httpx.TransportError, ValueError, KeyError):
        return False
    return ids <= {w["id"] for w in workers if w["status"] in ("ready", "busy")}


def test_two_workers_start_a_higher_priority_then_a_later_tenant_before_an_earlier_ones_backlog(
    redis_server: RedisServer, demo_cache_dir: Path, tmp_path: Path
) -> None:
    keys_file = tmp_path / "keys.toml"
    keys_file.write_text(KEYS)
    prefix = f"fair{uuid.uuid4().hex[:8]}"
    workers = [Worker(redis_server.url, prefix, f"f{i}", cache_dir=demo_cache_dir, log_path=tmp_path / f"f{i}.log",
                      extra=("--shutdown-grace-seconds", "1")) for i in (1, 2)]
    api = ApiNode(redis_server.url, prefix, cache_dir=demo_cache_dir, log_path=tmp_path / "api.log",
                  extra=("--api-keys-file", str(keys_file), "--max-steps", "1000"))
    try:
        api.wait_up()
        wait_until(lambda: _ready(api, {"f1", "f2"}), 180, lambda: workers[0].log() + workers[1].log())
        # A's first two keep both workers busy while everything else queues behind them.
        a_jobs = [_post(api, A, steps=300, seed=i) for i in range(2)]
        wait_until(lambda: all(_view(api, A, j)["status"] == "running" for j in a_jobs), 60, api.log)
        a_jobs += [_post(api, A, steps=4, seed=i) for i in range(2, 8)]
        b_jobs = [_post(api, B, steps=4, seed=i) for i in range(2)]
        c_job = _post(api, C, steps=4, priority=5)
        shown = {job: _view(api, key, job) for key, job in ((C, c_job), (B, b_jobs[0]), (A, a_jobs[2]))}
        assert all(view["status"] == "queued" for view in shown.values()), shown  # A's first two still run
        assert [shown[j]["queue_position"] for j in (c_job, b_jobs[0], a_jobs[2])] == [1, 2, 3], shown

        started: dict[str, str] = {}
        for key, ids in ((A, a_jobs), (B, b_jobs), (C, [c_job])):
            for job in ids:
                wait_until(lambda key=key, job=job: _view(api, key, job)["status"] in ("completed", "failed"), 240,
                           api.log)
                view = _view(api, key, job)
                assert view["status"] == "completed", view
                started[job] = view["started_at"]
        assert started[c_job] < started[b_jobs[0]] < started[a_jobs[2]], started  # ISO 8601: compare as text
        assert started[b_jobs[1]] < started[a_jobs[4]], started
    finally:
        for proc in (*workers, api):
            proc.stop()

"""Fleet workers batch: two real ``sdworker worker --max-batch 2`` processes on a real redis-server.
A worker that claims a job takes a waiting compatible job as its batch partner (one batch, shared
UNet calls, pixels as a solo run's), and leaves an incompatible one in the queue for the other worker."""

from __future__ import annotations

import io
import math
import uuid
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.redis_server import RedisServer

from .procs import ApiNode, Worker, wait_until, workers_ready

pytestmark = pytest.mark.live

BASE = {"prompt": "a lighthouse on a cliff", "model": "demo", "width": 64, "height": 64, "guidance_scale": 7.0,
        "preview": {"every": 0}}
SHARED = "2 jobs share each UNet call of one batch"


def _post(api: ApiNode, **fields: object) -> str:
    response = httpx.post(f"{api.url}/v1/jobs", json={**BASE, **fields}, timeout=10)
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


def _view(api: ApiNode, job_id: str) -> dict:
    return httpx.get(f"{api.url}/v1/jobs/{job_id}", timeout=10).json()


def _done(api: ApiNode, job_id: str) -> dict:
    wait_until(lambda: _view(api, job_id)["status"] in ("completed", "failed", "cancelled"), 240, api.log)
    view = _view(api, job_id)
    assert view["status"] == "completed", view
    return view


def _pixels(api: ApiNode, job_id: str) -> np.ndarray:
    png = httpx.get(f"{api.url}/v1/jobs/{job_id}/image", timeout=10).content
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float64)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a - b) ** 2))
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


def test_two_batching_workers_share_unet_calls_and_leave_an_incompatible_job_to_the_other(
    redis_server: RedisServer, demo_cache_dir: Path, tmp_path: Path
) -> None:
    prefix = f"b{uuid.uuid4().hex[:8]}"
    args = ("--max-batch", "2", "--shutdown-grace-seconds", "1")
    workers = [Worker(redis_server.url, prefix, f"b{i}", cache_dir=demo_cache_dir, log_path=tmp_path / f"b{i}.log",
                      extra=args) for i in (1, 2)]
    api = ApiNode(redis_server.url, prefix, cache_dir=demo_cache_dir, log_path=tmp_path / "api.log",
                  extra=("--max-steps", "1000"))
    try:
        api.wait_up()
        wait_until(lambda: workers_ready(api.url, {"b1", "b2"}), 180, lambda: workers[0].log() + workers[1].log())
        # Both workers busy, one for half as long: A and B (compatible) and C (another size) queue up
        # behind them; the first worker free takes A with B as its partner, the other takes C.
        short = _post(api, steps=100, seed=1)
        long = _post(api, steps=200, seed=2)
        wait_until(lambda: all(_view(api, j)["status"] == "running" for j in (short, long)), 60, api.log)
        a = _post(api, steps=150, seed=11)
        b = _post(api, steps=150, seed=12)
        c = _post(api, steps=150, seed=13, height=72)
        views = {name: _done(api, job) for name, job in (("a", a), ("b", b), ("c", c), ("short", short))}
        assert views["a"]["worker"] == views["b"]["worker"] == views["short"]["worker"], views
        assert views["c"]["worker"] != views["a"]["worker"], views
        batcher = next(w for w in workers if w.worker_id == views["a"]["worker"])
        other = next(w for w in workers if w is not batcher)
        assert SHARED in batcher.log() and SHARED not in other.log()
        # The batched job's pixels equal its solo run's.
        solo = _post(api, steps=150, seed=11)
        _done(api, solo)
        assert _psnr(_pixels(api, a), _pixels(api, solo)) >= 40.0
    finally:
        for proc in (*workers, api):
            proc.stop() if proc.alive() else proc.kill()

"""One fleet for the failure tests: a real redis-server (the session's), two ``sdworker api`` nodes
and two ``sdworker worker`` processes on the demo model, all under one key prefix. Tests share it (a
worker takes ~10 s to start), and a test that kills a worker starts its replacement at once."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer

from .procs import ApiNode, Worker, wait_until, workers_ready

pytestmark = pytest.mark.live

# Long jobs (hundreds of 15 ms demo steps) give a test time to kill a worker mid-job.
API_ARGS = ("--max-steps", "3000", "--max-queue", "50")
# A short grace: SIGTERM hands a long job back after a second instead of thirty.
WORKER_ARGS = ("--shutdown-grace-seconds", "1")


class Fleet:
    def __init__(self, redis: RedisServer, cache_dir: Path, folder: Path) -> None:
        self.redis = redis
        self.cache_dir = cache_dir
        self.folder = folder
        self.prefix = f"fleet{uuid.uuid4().hex[:8]}"
        self.apis: list[ApiNode] = []
        self.workers: list[Worker] = []
        self._count = 0

    def api(self) -> ApiNode:
        node = ApiNode(self.redis.url, self.prefix, cache_dir=self.cache_dir,
                       log_path=self.folder / f"api{len(self.apis)}.log", extra=API_ARGS)
        self.apis.append(node)
        return node

    def worker(self) -> Worker:
        self._count += 1
        worker_id = f"w{self._count}"
        worker = Worker(self.redis.url, self.prefix, worker_id, cache_dir=self.cache_dir,
                        log_path=self.folder / f"{worker_id}.log", extra=WORKER_ARGS)
        self.workers.append(worker)
        return worker

    def live_workers(self) -> list[Worker]:
        return [w for w in self.workers if w.alive()]

    def wait_workers(self, count: int = 2, timeout: float = 120.0) -> list[Worker]:
        """Until ``count`` live workers are registered and ready."""
        live = self.live_workers()
        assert len(live) >= count, "not enough worker processes"
        wait_until(lambda: workers_ready(self.apis[0].url, {w.worker_id for w in live[:count]}), timeout,
                   lambda: "\n".join(w.log() for w in live))
        return live[:count]

    def by_id(self, worker_id: str) -> Worker:
        return next(w for w in self.workers if w.worker_id == worker_id)

    def close(self) -> None:
        for proc in [*self.workers, *self.apis]:
            proc.stop() if proc.alive() else proc.kill()


@pytest.fixture(scope="session")
def fleet(redis_server: RedisServer, demo_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    fleet = Fleet(redis_server, demo_cache_dir, tmp_path_factory.mktemp("fleet"))
    try:
        fleet.worker()
        fleet.worker()
        for node in (fleet.api(), fleet.api()):
            node.wait_up()
        fleet.wait_workers(2)
        yield fleet
    finally:
        fleet.close()

"""Real fleet processes for the failure tests: ``sdworker api`` and ``sdworker worker`` subprocesses
(demo model, one torch thread) against a real redis-server, started and signalled like production."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.live.server import ROOT, free_port

# Short lease and claim times so a lost worker is noticed in seconds (production: 5 s and 30 s).
FLEET_ARGS = ("--lease-heartbeat-seconds", "0.5", "--claim-idle-seconds", "3")


def _env(cache_dir: Path) -> dict[str, str]:
    return {
        **os.environ,
        "SDWORKER_CACHE_DIR": str(cache_dir),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(ROOT),
    }


class Proc:
    """One ``python -m sdworker ...`` subprocess with its log in a file."""

    def __init__(self, argv: list[str], *, cache_dir: Path, log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sdworker", *argv], cwd=ROOT, env=_env(cache_dir), stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            self.process.send_signal(sig)

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self, timeout: float = 20.0) -> int:
        if self.alive():
            self.process.send_signal(signal.SIGCONT)  # a paused process cannot handle SIGTERM
            self.process.terminate()
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait(timeout=10)
        self._log.close()
        return code

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait(10)
        self._log.close()


class ApiNode(Proc):
    def __init__(self, redis_url: str, prefix: str, *, cache_dir: Path, log_path: Path, extra: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        super().__init__(
            ["api", "--redis", redis_url, "--redis-prefix", prefix, "--port", str(self.port), *FLEET_ARGS, *extra],
            cache_dir=cache_dir, log_path=log_path,
        )

    def wait_up(self, timeout: float = 60.0) -> None:
        wait_until(lambda: _answers(self.url + "/health"), timeout, lambda: self.log(), self)


class Worker(Proc):
    def __init__(self, redis_url: str, prefix: str, worker_id: str, *, cache_dir: Path, log_path: Path,
                 extra: tuple[str, ...] = ()):
        self.worker_id = worker_id
        super().__init__(
            ["worker", "--redis", redis_url, "--redis-prefix", prefix, "--model", "demo", "--worker-id", worker_id,
             "--preview-min-interval-ms", "0", *FLEET_ARGS, *extra],
            cache_dir=cache_dir, log_path=log_path,
        )


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def wait_until(predicate: Any, timeout: float, describe: Any = None, proc: Proc | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and not proc.alive():
            raise RuntimeError(f"process exited with {proc.process.returncode}:\n{proc.log()}")
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"not true after {timeout} s" + (f":\n{describe()}" if describe else ""))


def workers_ready(api_url: str, ids: set[str]) -> bool:
    try:
        workers = httpx.get(api_url + "/v1/workers", timeout=5).json()["workers"]
    except (httpx.TransportError, ValueError, KeyError):
        return False
    ready = {w["id"] for w in workers if w["status"] in ("ready", "busy")}
    return ids <= ready

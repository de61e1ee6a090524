"""What the service benchmarks share: the processes they start (sdworker nodes, redis-server), the
file-descriptor limit a 1,000-watcher run needs, percentiles, the machine's load, and the table and
JSON they end with. The SSE clients live in ``bench/watchers.py`` (spawned processes import them).

Every process is started through ``Procs``, which logs each to a file in the run's folder and stops
them all at the end (SIGTERM, then SIGKILL), so a failed run leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
# The fleet's timings shortened so a bench does not wait on leases (see docs/scaling.md).
FLEET_ARGS = ["--lease-heartbeat-seconds", "1", "--claim-idle-seconds", "10"]


# --- processes ----------------------------------------------------------------------------------


class Procs:
    """Every subprocess a benchmark starts, stopped (SIGTERM, then SIGKILL) at the end.

    Each node process gets one torch thread (``threads``): on a 2-core machine two workers with
    torch's default (one thread per core each) fight over both cores at every OpenMP barrier, and
    two workers measure no faster than one."""

    def __init__(self, workdir: Path, *, threads: int = 1) -> None:
        self.workdir = workdir
        self.threads = threads
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                    "SDWORKER_CACHE_DIR": str(workdir / "cache"), "PYTHONPATH": str(ROOT)}
        if threads:
            self.env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
        self.running: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "wb")  # noqa: SIM115 - the child holds it
        process = subprocess.Popen(argv, cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        self.running.append(process)
        return process

    def sdworker(self, name: str, *argv: str) -> subprocess.Popen[bytes]:
        return self.start(name, [sys.executable, "-m", "sdworker", *argv])

    def stop(self, process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)

    def stop_all(self) -> None:
        for process in reversed(self.running):
            self.stop(process)
        self.running.clear()

    def print_logs(self, tail_chars: int = 2000) -> None:
        """The end of every process's log, on stderr (after a failure)."""
        for log in sorted(self.workdir.glob("*.log")):
            print(f"--- {log.name}\n{log.read_text(errors='replace')[-tail_chars:]}", file=sys.stderr)


@contextmanager
def redis_server(procs: Procs) -> Iterator[str]:
    """A redis-server of our own (append-only file on) on a free port; its URL."""
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    folder = procs.workdir / "redis"
    folder.mkdir(exist_ok=True)
    process = procs.start("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                                    "--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction",
                                    "--maxclients", "10000"])
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
            break
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield url
    finally:
        procs.stop(process)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(url: str, predicate: Callable[[httpx.Response], Any], timeout: float = 300.0) -> Any:
    """Poll ``url`` until ``predicate(response)`` is truthy; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate(httpx.get(url, timeout=5))
            if value:
                return value
        except (httpx.TransportError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not get there in {timeout} s")


def raise_fd_limit(watchers: int) -> int:
    """Raise this process's open-file limit (children inherit it) to what ``watchers`` SSE clients and
    the servers they connect to need, as far as the hard limit allows; the soft limit now.

    A default soft limit of 1,024 makes the 1,000th connection fail with EMFILE in the client or
    the server, and a fan-out run then waits for a watcher that never connects."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 4 * watchers + 1024
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- what a process costs -----------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far: what the server spent, whatever else the machine
    ran meanwhile (wall-clock latencies on a shared machine move with its load; this does not)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def load_average() -> float:
    """The machine's 1-minute load average: on a shared machine, what the latencies must be read with."""
    return round(os.getloadavg()[0], 2)


# --- numbers and output -------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile, ``q`` a fraction (0.99, not 99); NaN when there is nothing."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(value: float | None, digits: int = 1) -> str:
    """A millisecond figure for a table; ``-`` when it was not measured."""
    if value is None or value != value:  # None or NaN
        return "-"
    return f"{value:.{digits}f}"


def print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    """A two-column table (what, value) under ``title``."""
    width = max((len(name) for name, _ in rows), default=0)
    print(f"\n{title}")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def write_json(path: Path, result: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwrote {path}")

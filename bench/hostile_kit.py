"""What every case of ``bench/hostile.py`` shares: the server under attack (a real ``serve`` process,
bench/fake_server.py, loopback only, with an API keys file), one case's tally, raw sockets and the
check that an answer is of the right class."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
HANG_SECONDS = 30.0  # any one request: an answer later than this is a hang
KEY = "hostile-bench-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
BODY_TIMEOUT_SECONDS = 2.0  # the server's --body-timeout-seconds here: unfinished bodies must get 408 soon
MAX_QUEUE = 4


@dataclass
class Phase:
    """One case: how many requests, what they were answered, and what went wrong (the first notes)."""

    name: str
    tried: int = 0
    misbehaved: int = 0
    notes: list[str] = field(default_factory=list)
    answers: dict[str, int] = field(default_factory=dict)

    def answer(self, key: str) -> None:
        self.answers[key] = self.answers.get(key, 0) + 1

    def bad(self, note: str) -> None:
        self.misbehaved += 1
        if len(self.notes) < 5:
            self.notes.append(note)

    def expect(self, label: str, code: int, allowed: set[int] | frozenset[int]) -> bool:
        """Count one answer; a 5xx, or a status outside ``allowed`` (the wrong class: a hostile input
        taken as fine, or a fine one refused), is a misbehaviour."""
        self.tried += 1
        self.answer(str(code))
        if code >= 500 or code not in allowed:
            self.bad(f"{label}: {code}")
            return False
        return True


class Server:
    """``bench/fake_server.py`` (uvicorn, the CLI's server, the FakeEngine at 0.05 s a step), or with
    ``demo_cache`` ``sdworker serve --model demo`` (the real diffusers engine on the tiny demo model),
    on 127.0.0.1 with a keys file, a queue of 4 and a 2 s body deadline; its log is kept for the access
    log case. Stopped with SIGTERM (then SIGKILL after 30 s) however the run ends."""

    def __init__(self, port: int, workdir: Path, demo_cache: Path | None = None) -> None:
        self.port = port
        self.demo = demo_cache is not None
        self.url = f"http://127.0.0.1:{port}"
        self.keys_file = workdir / "keys"
        self.keys_file.write_text(KEY + "\n")
        self.log_path = workdir / "server.log"
        env = {
            **os.environ,
            "SDWORKER_HOST": "127.0.0.1",
            "SDWORKER_PORT": str(port),
            "SDWORKER_MAX_QUEUE": str(MAX_QUEUE),
            "SDWORKER_HEADER_TIMEOUT_SECONDS": "3",
            "SDWORKER_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT_SECONDS),
            "SDWORKER_API_KEYS_FILE": str(self.keys_file),
            "SDWORKER_TEST_FAKE_STEP_SECONDS": "0.05",
            "OMP_NUM_THREADS": "1",
        }
        command = [sys.executable, str(ROOT / "bench" / "fake_server.py")]
        if demo_cache is not None:
            env["SDWORKER_CACHE_DIR"] = str(demo_cache)
            command = [sys.executable, "-m", "sdworker", "serve", "--model", "demo"]
        self.log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop
        self.process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 180  # the demo model loads in seconds idle, a minute on a busy machine
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
            if not self.alive():
                raise RuntimeError(f"server exited; see {self.log_path}")
            time.sleep(0.1)
        raise TimeoutError("server not ready")

    def alive(self) -> bool:
        return self.process.poll() is None

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.process.pid}/fd"))

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def sighup(self) -> None:
        self.process.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


async def raw(port: int, data: bytes, *, read_until_close: bool = True, timeout: float = HANG_SECONDS) -> bytes:
    """Send raw bytes, read the answer until the server closes (or ``timeout``: TimeoutError)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        chunks = []
        async with asyncio.timeout(timeout):
            while True:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                chunks.append(chunk)
                if not read_until_close and b"\r\n\r\n" in b"".join(chunks):
                    break
        return b"".join(chunks)
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


def status_of(answer: bytes) -> int:
    try:
        return int(answer.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0  # closed without an answer


async def cancel_all(client: httpx.AsyncClient) -> None:
    for job in (await client.get("/v1/jobs", params={"limit": 1000})).json()["jobs"]:
        if job["status"] in ("queued", "running"):
            await client.delete(f"/v1/jobs/{job['job_id']}")


TERMINAL = ("completed", "failed", "cancelled")


async def finish(client: httpx.AsyncClient, job_id: str, phase: Phase, label: str) -> None:
    """Wait for an accepted native job to end: a job that fails, or does not end within the bound,
    after its request was accepted is a misbehaviour (the door let through what the engine cannot run)."""
    deadline = time.monotonic() + HANG_SECONDS
    while time.monotonic() < deadline:
        view = (await client.get(f"/v1/jobs/{job_id}")).json()
        if view["status"] in TERMINAL:
            if view["status"] == "failed":
                phase.bad(f"{label}: accepted, then failed ({view.get('error')})")
            return
        await asyncio.sleep(0.05)
    phase.bad(f"{label}: job {job_id} still {view['status']} after {HANG_SECONDS:.0f} s")

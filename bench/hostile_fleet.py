"""The cases of ``bench/hostile.py`` that need processes of their own, because they kill or stop them:

- **Redis faults**: a ``serve``-less fleet (``sdworker api`` + ``sdworker worker --model demo`` with
  ``--redis``) against a real redis-server (tests/redis_server.py: append-only file on). Jobs are
  accepted, redis-server is SIGKILLed mid-run, the API is asked everything for a few seconds, then
  redis-server comes back on the same port and folder. Misbehaviour: a 5xx other than 503, a 503
  without ``Retry-After``, no answer at all, the first request after the restart answered 503 (#20
  fault 10: a stale pooled connection), or an accepted job that does not complete (lost).
- **SIGTERM**: a ``serve`` (the same kind as the other cases: FakeEngine, or ``--demo``) with
  ``--shutdown-grace-seconds 2``, a running job and a queued one, and streams on both; then SIGTERM.
  Misbehaviour: a stream still open after the process exited (or after the bound), or a process
  that does not exit within ``EXIT_BOUND_SECONDS``. The times from the signal to the last stream's end
  and to the exit are reported; the grace is 2 s.

Both report the RSS and open file descriptors of the process that lives through the fault (the API
node) before and after; for SIGTERM the process is gone, so its exit code and times stand instead.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from bench.hostile_kit import AUTH, HANG_SECONDS, KEY, Phase, Server, status_of
from tests.redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
FLEET_ARGS = ("--lease-heartbeat-seconds", "0.5", "--claim-idle-seconds", "3")
OUTAGE_SECONDS = 3.0
GRACE_SECONDS = 2.0
EXIT_BOUND_SECONDS = GRACE_SECONDS + 10.0  # "exits": generous; the measured time is reported
JOB = {"prompt": "hostile fleet", "width": 64, "height": 64, "steps": 4, "preview": {"every": 0}}


def pid_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def pid_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def sdworker(workdir: Path, name: str, *argv: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SDWORKER_CACHE_DIR": str(workdir / "cache"),
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child holds it; closed with the run's folder
    return subprocess.Popen(
        [sys.executable, "-m", "sdworker", *argv], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def until(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
            if await check():
                return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s")


# --- Redis faults -------------------------------------------------------------------------------------


async def redis_faults(workdir: Path, phase: Phase) -> dict[str, Any]:
    from sdworker.engine.demo_model import ensure_demo_model

    ensure_demo_model(workdir / "cache")
    redis_server = RedisServer(workdir / "redis")
    redis_server.start()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    api = sdworker(
        workdir,
        "api",
        "api",
        "--redis",
        redis_server.url,
        "--redis-prefix",
        "hostile",
        "--port",
        str(port),
        "--log-level",
        "warning",
        *FLEET_ARGS,
    )
    worker = sdworker(
        workdir,
        "worker",
        "worker",
        "--redis",
        redis_server.url,
        "--redis-prefix",
        "hostile",
        "--model",
        "demo",
        "--worker-id",
        "hostile-w1",
        "--shutdown-grace-seconds",
        "1",
        "--log-level",
        "warning",
        *FLEET_ARGS,
    )
    extra: dict[str, Any] = {}
    try:
        async with httpx.AsyncClient(base_url=url, timeout=HANG_SECONDS) as client:

            async def worker_ready() -> bool:
                workers = (await client.get("/v1/workers")).json()["workers"]
                return any(w["status"] in ("ready", "busy") for w in workers)

            await until(worker_ready, 180, "the worker to be ready")
            await settle_jobs(client, [(await client.post("/v1/jobs", json=JOB)).json()["job_id"]], phase)  # warm
            fds, rss = pid_fds(api.pid), pid_rss_mb(api.pid)
            # Long enough that most are queued or running when Redis dies: "none lost" is then a claim.
            accepted = [job_id for job_id in [await submit(client, phase, steps=40) for _ in range(6)] if job_id]
            listed = (await client.get("/v1/jobs", params={"limit": 100})).json()["jobs"]
            extra["jobs_pending_at_kill"] = sum(job["status"] in ("queued", "running") for job in listed)
            redis_server.kill()
            killed = time.monotonic()
            while time.monotonic() - killed < OUTAGE_SECONDS:
                for call in outage_calls(client, accepted):
                    response = await ask(phase, call)
                    if response is not None and response.status_code == 202 and "job_id" in response.text:
                        accepted.append(response.json()["job_id"])
                await asyncio.sleep(0.1)
            redis_server.start()  # same port and folder: it loads its append-only file
            first = await ask(phase, client.get(f"/v1/jobs/{accepted[0]}"))
            if first is not None and first.status_code == 503:
                phase.bad("the first request after Redis came back answered 503 (a stale pooled connection)")
            extra["first_after_restart"] = first.status_code if first is not None else None
            await settle_jobs(client, accepted, phase)
            extra["jobs_accepted"] = len(accepted)
            extra.update(await back_to_baseline(api.pid, fds, rss, phase))
    finally:
        stop(worker)
        stop(api)
        redis_server.stop()
    return extra


def outage_calls(client: httpx.AsyncClient, accepted: list[str]) -> list[Awaitable[httpx.Response]]:
    return [
        client.post("/v1/jobs", json=JOB),
        client.get(f"/v1/jobs/{accepted[0]}"),
        client.get("/v1/jobs"),
        client.get("/health"),
        client.get("/ready"),
        client.delete(f"/v1/jobs/{accepted[-1]}") if len(accepted) > 99 else client.get("/v1/workers"),
    ]


async def submit(client: httpx.AsyncClient, phase: Phase, steps: int = 4) -> str | None:
    response = await ask(phase, client.post("/v1/jobs", json={**JOB, "steps": steps}))
    return response.json()["job_id"] if response is not None and response.status_code == 202 else None


async def ask(phase: Phase, call: Awaitable[httpx.Response]) -> httpx.Response | None:
    """One request: any answer under 500, or a 503 with Retry-After (Redis is away), is fine."""
    phase.tried += 1
    try:
        async with asyncio.timeout(HANG_SECONDS):
            response = await call
    except (TimeoutError, httpx.HTTPError) as exc:
        phase.bad(f"no answer: {type(exc).__name__}")
        return None
    code = response.status_code
    phase.answer(str(code))
    if code >= 500 and not (code == 503 and "retry-after" in response.headers):
        phase.bad(f"{response.request.method} {response.request.url.path}: {code} {response.text[:80]}")
    return response


async def settle_jobs(client: httpx.AsyncClient, job_ids: list[str], phase: Phase, timeout: float = 180) -> None:
    """Every accepted job completes: one that fails or is missing was lost to the outage."""
    deadline = time.monotonic() + timeout
    for job_id in job_ids:
        while True:
            response = await client.get(f"/v1/jobs/{job_id}")
            status = response.json().get("status") if response.status_code == 200 else None
            if status in ("completed", "failed", "cancelled"):
                if status != "completed":
                    phase.bad(f"job {job_id} {status}: {response.json().get('error')}")
                break
            if time.monotonic() > deadline:
                phase.bad(f"job {job_id} lost: {response.status_code} {status} after {timeout:.0f} s")
                break
            await asyncio.sleep(0.2)


async def back_to_baseline(pid: int, fds: int, rss: float, phase: Phase) -> dict[str, Any]:
    from bench.hostile import FD_TOLERANCE, RSS_TOLERANCE_MB

    deadline = time.monotonic() + 15
    while pid_fds(pid) > fds + FD_TOLERANCE or pid_rss_mb(pid) > rss + RSS_TOLERANCE_MB:
        if time.monotonic() > deadline:
            phase.bad(
                f"left behind: fds {pid_fds(pid)} (before {fds}), RSS {pid_rss_mb(pid):.0f} MB (before {rss:.0f})"
            )
            break
        await asyncio.sleep(0.2)
    return {"rss_mb": [round(rss, 1), round(pid_rss_mb(pid), 1)], "open_fds": [fds, pid_fds(pid)]}


# --- SIGTERM ------------------------------------------------------------------------------------------


async def sigterm(workdir: Path, phase: Phase, demo_cache: Path | None, streams: int = 20) -> dict[str, Any]:
    (workdir / "sigterm").mkdir(exist_ok=True)
    os.environ["SDWORKER_SHUTDOWN_GRACE_SECONDS"] = str(GRACE_SECONDS)  # Server passes its environment on
    try:
        server = Server(free_port(), workdir / "sigterm", demo_cache)
    finally:
        del os.environ["SDWORKER_SHUTDOWN_GRACE_SECONDS"]
    try:
        server.wait_ready()
        fds, rss = server.fds(), server.rss_mb()
        async with httpx.AsyncClient(base_url=server.url, timeout=HANG_SECONDS, headers=AUTH) as client:
            running = (await client.post("/v1/jobs", json={**JOB, "steps": 100})).json()["job_id"]
            queued = (await client.post("/v1/jobs", json={**JOB, "steps": 20})).json()["job_id"]
            opened = [await open_stream(server.port, job_id) for job_id in [running, queued] * (streams // 2)]
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            ends = await asyncio.gather(*(stream_end(reader, writer, signalled) for reader, writer in opened))
            exited = await asyncio.to_thread(wait_exit, server.process, signalled)
        phase.tried += len(opened) + 1
        for end in ends:
            phase.answer("stream ended" if end is not None else "stream hung")
            if end is None:
                phase.bad(f"a stream was still open {EXIT_BOUND_SECONDS:.0f} s after SIGTERM")
        if exited is None:
            phase.bad(f"the process did not exit within {EXIT_BOUND_SECONDS:.0f} s of SIGTERM")
        else:
            phase.answer(f"exit {server.process.returncode}")
        last_end = max((e for e in ends if e is not None), default=None)
        return {
            "rss_mb": [round(rss, 1), None],
            "open_fds": [fds, None],
            "grace_seconds": GRACE_SECONDS,
            "streams_ended_seconds": round(last_end, 2) if last_end is not None else None,
            "exit_seconds": round(exited, 2) if exited is not None else None,
        }
    finally:
        server.stop()


async def open_stream(port: int, job_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /v1/jobs/{job_id}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HANG_SECONDS)
    if status_of(head) != 200:
        raise RuntimeError(f"stream answered {status_of(head)}")
    return reader, writer


async def stream_end(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, since: float) -> float | None:
    """Seconds from ``since`` until the server ends the stream (EOF, or the chunked body's last chunk);
    None if it is still open at the bound."""
    tail = b""
    try:
        async with asyncio.timeout(EXIT_BOUND_SECONDS - (time.monotonic() - since)):
            while chunk := await reader.read(65536):
                tail = (tail + chunk)[-16:]
                if tail.endswith(b"\r\n0\r\n\r\n"):
                    break
        return time.monotonic() - since
    except TimeoutError:
        return None
    except OSError:
        return time.monotonic() - since
    finally:
        writer.close()


def wait_exit(process: subprocess.Popen[bytes], since: float) -> float | None:
    try:
        process.wait(max(0.0, EXIT_BOUND_SECONDS - (time.monotonic() - since)))
    except subprocess.TimeoutExpired:
        return None
    return time.monotonic() - since

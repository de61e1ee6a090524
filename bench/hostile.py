"""Hostile clients against a real ``serve`` process (bench/fake_server.py: uvicorn, the CLI's server,
the FakeEngine at a set pace), one phase at a time:

- 300 SSE streams cut abruptly mid-job (TCP RST, or a plain close, alternating);
- 200 slow-header connections (a header line trickled a byte a second, never finished);
- 100 concurrent POSTs against a queue of 4;
- huge headers (one 100 KiB header, 2,000 small ones, a 70 KiB request line, a 1 MiB cookie);
- path tricks on ``/page/`` (``..``, encoded dots and slashes, NUL, overlong UTF-8, 5,000 characters).

A try misbehaved if it got a 5xx or hung past 30 s; a phase also counts as misbehaving if afterwards
the watchers or open streams (the server's own gauges: every stream is a task) are not back to 0, the
open file descriptors are not back near where they were, ``/health`` took over 1 s at any point, or
the process died. Prints a table plus RSS and open fds before/after; writes JSON with ``--json``.

    .venv/bin/python bench/hostile.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
HANG_SECONDS = 30.0
PAGE_FILES = {
    "index.html", "app.js", "auth.js", "errors.js", "follow.js", "form.js", "mask.js", "state.js", "style.css",
}


@dataclass
class Phase:
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


class Server:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        env = {
            **os.environ,
            "SDWORKER_PORT": str(port),
            "SDWORKER_MAX_QUEUE": "4",
            "SDWORKER_HEADER_TIMEOUT_SECONDS": "3",
            "SDWORKER_TEST_FAKE_STEP_SECONDS": "0.05",
            "OMP_NUM_THREADS": "1",
        }
        (ROOT / "bench" / "results").mkdir(exist_ok=True)
        self.log = open(ROOT / "bench" / "results" / "hostile-server.log", "wb")  # noqa: SIM115 - closed in stop
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "fake_server.py")], cwd=ROOT, env=env, stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(self.url + "/ready", timeout=1).status_code == 200:
                    return
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

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


JOB = {"prompt": "hostile", "width": 64, "height": 64, "steps": 60, "preview": {"every": 1, "min_interval_ms": 0}}


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


async def gauges(client: httpx.AsyncClient) -> dict[str, float]:
    text = (await client.get("/metrics")).text
    values = {}
    for line in text.splitlines():
        for name in ("sdworker_sse_watchers", "sdworker_sse_streams_open"):
            if line.startswith(name + " "):
                values[name] = float(line.split()[1])
    return values


async def settle(server: Server, client: httpx.AsyncClient, phase: Phase, fds_before: int) -> None:
    """After a phase: watchers, streams and fds back, the process alive."""
    deadline = time.monotonic() + 15
    while True:
        if not server.alive():
            phase.bad("the process died")
            return
        g = await gauges(client)
        fds = server.fds()
        streams = g.get("sdworker_sse_watchers", 0) + g.get("sdworker_sse_streams_open", 0)
        if streams == 0 and fds <= fds_before + 5:
            return
        if time.monotonic() > deadline:
            phase.bad(f"left behind: gauges {g}, fds {fds} (before {fds_before})")
            return
        await asyncio.sleep(0.2)


async def health_watch(url: str, worst: list[float], stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=HANG_SECONDS) as client:
        while not stop.is_set():
            start = time.monotonic()
            try:
                await client.get("/health")
                worst.append(time.monotonic() - start)
            except httpx.HTTPError:
                worst.append(HANG_SECONDS)
            await asyncio.sleep(0.2)


async def cancel_all(client: httpx.AsyncClient) -> None:
    for job in (await client.get("/v1/jobs", params={"limit": 1000})).json()["jobs"]:
        if job["status"] in ("queued", "running"):
            await client.delete(f"/v1/jobs/{job['job_id']}")


# --- phases -----------------------------------------------------------------------------------------


async def sse_disconnects(server: Server, client: httpx.AsyncClient, phase: Phase, count: int = 300) -> None:
    jobs: list[str] = []

    async def a_running_job() -> str:
        live = [j for j in jobs if (await client.get(f"/v1/jobs/{j}")).json()["status"] in ("queued", "running")]
        if live:
            return live[0]
        answer = await client.post("/v1/jobs", json=JOB)
        jobs.append(answer.json()["job_id"])
        return jobs[-1]

    async def one(index: int, job_id: str) -> None:
        phase.tried += 1
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(f"GET /v1/jobs/{job_id}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
            await writer.drain()
            async with asyncio.timeout(HANG_SECONDS):
                head = await reader.readuntil(b"\r\n\r\n")
                await reader.readuntil(b"\n\n")  # one event
            phase.answer(str(status_of(head)))
            if status_of(head) >= 500:
                phase.bad(f"stream answered {status_of(head)}")
            sock = writer.get_extra_info("socket")
            if index % 2 == 0 and sock is not None:  # RST, as a killed client or a dropped network does
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
        except TimeoutError:
            phase.bad("no first event within 30 s")
        except (OSError, asyncio.IncompleteReadError) as exc:
            phase.bad(f"stream failed: {type(exc).__name__}")

    for batch in range(0, count, 30):
        job_id = await a_running_job()
        await asyncio.gather(*(one(i, job_id) for i in range(batch, min(batch + 30, count))))
    await cancel_all(client)


async def slow_headers(server: Server, client: httpx.AsyncClient, phase: Phase, count: int = 200) -> None:
    async def one() -> None:
        phase.tried += 1
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            start = time.monotonic()
            while time.monotonic() - start < HANG_SECONDS:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        if not await reader.read(65536):
                            phase.answer("closed by server")
                            return
                try:
                    writer.write(b"a")
                    await writer.drain()
                except OSError:
                    phase.answer("closed by server")
                    return
            phase.bad("slow-header connection still open after 30 s")
        finally:
            writer.close()

    await asyncio.gather(*(one() for _ in range(count)))


async def queue_flood(server: Server, client: httpx.AsyncClient, phase: Phase, count: int = 100) -> None:
    async def one() -> None:
        phase.tried += 1
        try:
            answer = await client.post("/v1/jobs", json=JOB, timeout=HANG_SECONDS)
        except httpx.TimeoutException:
            phase.bad("POST hung past 30 s")
            return
        phase.answer(str(answer.status_code))
        if answer.status_code >= 500 or answer.status_code not in (202, 429):
            phase.bad(f"POST answered {answer.status_code}")

    await asyncio.gather(*(one() for _ in range(count)))
    await cancel_all(client)


async def huge_headers(server: Server, client: httpx.AsyncClient, phase: Phase) -> None:
    host = b"Host: 127.0.0.1\r\nConnection: close\r\n"
    get = b"GET /health HTTP/1.1\r\n" + host
    many = b"".join(b"X-%d: v\r\n" % i for i in range(2000))
    tries = {
        "one 100 KiB header": get + b"X-Big: " + b"a" * 100 * 1024 + b"\r\n\r\n",
        "2,000 headers": get + many + b"\r\n",
        "70 KiB request line": b"GET /health?" + b"q" * 70 * 1024 + b" HTTP/1.1\r\n" + host + b"\r\n",
        "1 MiB cookie": get + b"Cookie: " + b"c" * 1024 * 1024 + b"\r\n\r\n",
        "100 KiB Authorization": b"GET /v1/jobs HTTP/1.1\r\n" + host + b"Authorization: Bearer " + b"k" * 102400
        + b"\r\n\r\n",
    }
    for name, data in tries.items():
        for _ in range(4):
            phase.tried += 1
            try:
                answer = await raw(server.port, data)
            except TimeoutError:
                phase.bad(f"{name}: hung past 30 s")
                continue
            except OSError:
                phase.answer("reset")
                continue
            code = status_of(answer)
            phase.answer(str(code))
            if code >= 500:
                phase.bad(f"{name}: {code}")


async def page_paths(server: Server, client: httpx.AsyncClient, phase: Phase) -> None:
    paths = [
        "/page/../../../../etc/passwd", "/page/..%2f..%2f..%2fetc%2fpasswd", "/page/%2e%2e/%2e%2e/etc/passwd",
        "/page/%252e%252e%252fetc%252fpasswd", "/page/app.js%00.png", "/page/./app.js", "/page//etc/passwd",
        "/page/APP.JS", "/page/app.js/", "/page/app.js/..", "/page/" + "a" * 5000, "/page/..\\..\\windows\\win.ini",
        "/page/%c0%ae%c0%ae/%c0%ae%c0%ae/etc/passwd", "/page/%ff%fe", "/page/.hidden", "/page/__init__.py",
        "/page/../app.py", "/page/%2e", "/page/~root", "/page/index.html?../../etc/passwd",
        "/page/index.html#..", "//page/app.js", "/page/app.js;.css", "/page/%u002e%u002e/",
    ]
    for path in paths:
        phase.tried += 1
        request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode("latin-1")
        try:
            answer = await raw(server.port, request)
        except TimeoutError:
            phase.bad(f"{path[:40]}: hung")
            continue
        code = status_of(answer)
        phase.answer(str(code))
        name = path.split("?")[0].split("#")[0].removeprefix("/page/")
        if code >= 500:
            phase.bad(f"{path[:40]}: {code}")
        elif code == 200 and (name not in PAGE_FILES or b"root:" in answer):
            phase.bad(f"{path[:40]}: served something ({len(answer)} bytes)")


PHASES = [
    ("300 SSE disconnects mid-job", sse_disconnects),
    ("200 slow-header connections", slow_headers),
    ("100 POSTs, queue of 4", queue_flood),
    ("huge headers", huge_headers),
    ("path tricks on /page/", page_paths),
]


async def run(server: Server) -> dict[str, Any]:
    results = []
    rss_before, fds_before = server.rss_mb(), server.fds()
    async with httpx.AsyncClient(base_url=server.url, timeout=HANG_SECONDS) as client:
        for name, attack in PHASES:
            phase = Phase(name)
            worst: list[float] = []
            stop = asyncio.Event()
            watcher = asyncio.create_task(health_watch(server.url, worst, stop))
            fds = server.fds()
            started = time.monotonic()
            await attack(server, client, phase)
            stop.set()
            await watcher
            slow = sum(1 for s in worst if s > 1.0)
            if slow:
                phase.bad(f"/health over 1 s {slow} times (worst {max(worst):.2f} s)")
            await settle(server, client, phase, fds)
            results.append({**asdict(phase), "seconds": round(time.monotonic() - started, 1),
                            "health_worst_seconds": round(max(worst, default=0.0), 3)})
            if not server.alive():
                break
    return {
        "phases": results,
        "rss_mb": {"before": round(rss_before, 1), "after": round(server.rss_mb(), 1) if server.alive() else None},
        "open_fds": {"before": fds_before, "after": server.fds() if server.alive() else None},
        "alive": server.alive(),
    }


def print_table(report: dict[str, Any]) -> None:
    print(f"{'attack':32} {'tried':>6} {'misbehaved':>10} {'health max s':>12} {'secs':>6}  answers")
    for p in report["phases"]:
        answers = ", ".join(f"{k}: {v}" for k, v in sorted(p["answers"].items()))
        print(f"{p['name']:32} {p['tried']:>6} {p['misbehaved']:>10} {p['health_worst_seconds']:>12} "
              f"{p['seconds']:>6}  {answers}")
        for note in p["notes"]:
            print(f"{'':34}! {note}")
    rss, fds = report["rss_mb"], report["open_fds"]
    print(f"RSS MB before/after: {rss['before']} / {rss['after']}; open fds before/after: "
          f"{fds['before']} / {fds['after']}; process alive: {report['alive']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = Server(port)
    try:
        server.wait_ready()
        report = asyncio.run(run(server))
    finally:
        server.stop()
    print_table(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    sys.exit(0 if report["alive"] and not any(p["misbehaved"] for p in report["phases"]) else 1)


if __name__ == "__main__":
    main()

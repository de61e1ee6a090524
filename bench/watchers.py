"""The clients of ``bench/service.py``'s 1,000-watcher run, in a module of their own: they run in
spawned processes, which import them by name (a script loaded by path has none to import)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx


async def watch(
    host: str, port: int, path: str, connected: asyncio.Event, counter: list[int], total: int
) -> list[tuple[int, str, float, float]]:
    """One raw SSE client: (id, event, at, received) for every event until the stream ends."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"stream answered {status!r}")
    chunked = False
    while (line := await reader.readline()) not in (b"\r\n", b""):
        chunked |= line.lower().startswith(b"transfer-encoding: chunked")
    counter[0] += 1
    if counter[0] == total:
        connected.set()
    events: list[tuple[int, str, float, float]] = []
    buffer = b""
    try:
        while True:
            if chunked:
                size = int((await reader.readline()).strip() or b"0", 16)
                if size == 0:
                    break
                data = await reader.readexactly(size + 2)
                buffer += data[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    break
                buffer += data
            received = time.time()
            while (cut := buffer.find(b"\n\n")) >= 0:
                block, buffer = buffer[:cut], buffer[cut + 2 :]
                name = frame_field(block, b"event: ")
                if name is None:
                    continue
                # ``end`` carries rbee's marker, not JSON: its delay is counted from the terminal
                # event's publish time (the stream's last frame after the job is done).
                at = (events[-1][2] if events else received) if name == "end" else publish_time(block)
                events.append((int(frame_field(block, b"id: ") or 0), name, at, received))
                if name == "end":
                    return events
    finally:
        writer.close()
    return events


def sample_health(url: str, stop: Any, out: Any) -> None:
    """In a process of its own (the watchers' client loop must not delay it): GET /health on one
    connection every 20 ms until ``stop`` is set; sends the latencies (ms) through ``out``."""
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            started = time.perf_counter()
            answer = client.get("/health")
            latencies.append((time.perf_counter() - started) * 1000)
            if answer.status_code != 200:
                latencies.append(float("inf"))
            time.sleep(0.02)
    out.send(latencies)


def watcher_process(port: int, path: str, count: int, out: Any) -> None:
    """``count`` raw SSE watchers in one client process: sends "ready" once started (its imports must
    not compete with the server during the burst), connects on "go", sends "connected" once all are
    subscribed, then every watcher's events (or the error's text)."""
    out.send("ready")
    if out.recv() != "go":
        return

    async def run() -> list[Any]:
        connected = asyncio.Event()
        counter = [0]
        tasks = [asyncio.create_task(watch("127.0.0.1", port, path, connected, counter, count)) for _ in range(count)]
        await asyncio.wait_for(connected.wait(), 300)
        out.send("connected")
        results = await asyncio.gather(*tasks, return_exceptions=True)
        return [r if isinstance(r, list) else repr(r) for r in results]

    out.send(asyncio.run(run()))


def frame_field(block: bytes, prefix: bytes) -> str | None:
    """A small field (``id``, ``event``) of one SSE frame, without decoding the frame."""
    start = 0 if block.startswith(prefix) else block.find(b"\n" + prefix) + 1
    if start == 0 and not block.startswith(prefix):
        return None
    start += len(prefix)
    end = block.find(b"\n", start)
    return block[start : end if end >= 0 else len(block)].decode()


def publish_time(block: bytes) -> float:
    """The frame's ``at`` (the server writes it last) read from the bytes' tail: a ``complete`` frame
    carries a base64 PNG, and 1,000 decodes and JSON parses of it in these client processes would be
    counted as the server's delivery delay."""
    start = block.rfind(b'"at":')
    return float(block[start + 5 : block.rfind(b"}")]) if start >= 0 else 0.0

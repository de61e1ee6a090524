"""The 1,000-watcher fan-out of ``bench/service.py`` (one ``serve``) and ``bench/scale.py`` (two API
nodes), and its clients. The clients run in spawned processes, which import this module by name (a
script loaded by path has none to import), so one client loop reading 1,000 streams does not add its
own lag to the numbers.

``fan_out`` measures one job that waits (behind blockers the caller queued) while the watchers
subscribe: ``/health`` sampled every 20 ms on its own connection through the connect burst, then
``release`` (the caller cancels the blockers), then every watcher's events until its stream ends.

A watcher that cannot connect is retried a few times (a server busy with the burst may refuse or
answer 503 for a moment) and then counted as an error, with its reason: a run reports what happened
rather than waiting for a watcher that will never come.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, cast

import httpx

from bench.harness import cpu_seconds, load_average, percentile, rss_mb

CONNECT_TRIES = 4
CONNECT_BACKOFF_SECONDS = (0.2, 0.5, 1.0)
CONNECT_TIMEOUT_SECONDS = 180.0  # for all watchers to be subscribed
RUN_TIMEOUT_SECONDS = 600.0  # from the release to the last stream's end

T = TypeVar("T")
Event = tuple[int, str, float, float]  # (id, event name, publish time "at", receipt time)


class StreamRefused(Exception):
    """The server answered the stream request with something else than 200."""


# A watcher's buffer holds a whole ``complete`` frame (a 256 px PNG in base64 is about 200 KB), so the
# burst at a job's end reads it in place; a larger frame grows the buffer once.
BUFFER_BYTES = 256 * 1024
MIN_READ_BYTES = 64 * 1024


class SseWatcher(asyncio.BufferedProtocol):
    """One raw SSE client whose bytes the kernel reads straight into its buffer (``recv_into``), where
    the frames are parsed: no bytes object per read and none of a stream reader's copies.

    Why not ``asyncio.open_connection``: these clients share the server's two cores, so their CPU is
    counted as the server's delivery delay. Reading 1,000 copies of a 196 KB frame through stream
    readers (a bytes object per read, the reader's buffer, ``readexactly``'s copy) cost the client
    processes about twice the CPU of reading them in place (``docs/benchmarks.md``)."""

    def __init__(self, request: bytes) -> None:
        loop = asyncio.get_running_loop()
        self.request = request
        self.head: asyncio.Future[None] = loop.create_future()  # the response head: 200, or StreamRefused
        self.done: asyncio.Future[list[Event]] = loop.create_future()  # every event, once the stream ends
        self.events: list[Event] = []
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray(BUFFER_BYTES)
        self.start = 0  # the first byte not parsed yet
        self.end = 0  # the first free byte
        self.chunked: bool | None = None  # None until the head is read
        self.carry = b""  # a frame that a chunk's end cut (servers write whole frames; in case one does not)
        self.received = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass asyncio's
        transport.write(self.request)

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.start == self.end:
            self.start = self.end = 0
        if len(self.buffer) - self.end < MIN_READ_BYTES:
            self._make_room(MIN_READ_BYTES)
        return memoryview(self.buffer)[self.end :]

    def _make_room(self, free: int) -> None:
        """Move what is not parsed yet to the front of a buffer with ``free`` bytes after it (a new one:
        the buffer handed out last may still be exported, and an exported bytearray cannot resize)."""
        held = self.end - self.start
        fresh = bytearray(max(len(self.buffer), held + free))
        fresh[:held] = memoryview(self.buffer)[self.start : self.end]
        self.buffer, self.start, self.end = fresh, 0, held

    def buffer_updated(self, nbytes: int) -> None:
        self.end += nbytes
        self.received = time.time()
        try:
            self._parse()
        except (StreamRefused, ValueError) as exc:
            self._fail(exc)

    def _parse(self) -> None:
        buf = self.buffer
        while not self.done.done():
            if self.chunked is None:
                cut = buf.find(b"\r\n\r\n", self.start, self.end)
                if cut < 0:
                    return
                status, _, headers = bytes(buf[self.start : cut]).partition(b"\r\n")
                if status.split(b" ")[1:2] != [b"200"]:
                    raise StreamRefused(status.decode(errors="replace").strip() or "connection closed")
                self.chunked = b"transfer-encoding: chunked" in headers.lower()
                self.start = cut + 4
                self.head.set_result(None)
            elif not self.chunked:
                self.start = self._frames(buf, self.start, self.end)
                return
            else:
                line = buf.find(b"\r\n", self.start, self.end)
                if line < 0:
                    return
                size = int(buf[self.start : line], 16)
                if size == 0:
                    self._finish()
                    return
                data = line + 2
                if self.end < data + size + 2:  # the rest of the chunk (and its CRLF) is still coming
                    if len(buf) - self.start < data + size + 2 - self.start:
                        self._make_room(data + size + 2 - self.end)
                    return
                self._chunk(data, data + size)
                self.start = data + size + 2

    def _chunk(self, begin: int, stop: int) -> None:
        if not self.carry:
            rest = self._frames(self.buffer, begin, stop)
            self.carry = bytes(self.buffer[rest:stop])
            return
        joined = self.carry + self.buffer[begin:stop]
        self.carry = bytes(joined[self._frames(joined, 0, len(joined)) :])

    def _frames(self, buffer: bytes | bytearray, start: int, stop: int) -> int:
        """Record the whole frames of ``buffer[start:stop]``; where the first unfinished one starts."""
        while (cut := frame_end(buffer, start, stop)) >= 0:
            block_start, start = start, cut + 2
            name = frame_field(buffer, b"event: ", block_start, cut)
            if name is None:
                continue
            # ``end`` carries rbee's marker, not JSON: its delay is counted from the terminal event's
            # publish time (the stream's last frame after the job is done).
            events = self.events
            if name == "end":
                at = events[-1][2] if events else self.received
            else:
                at = publish_time(buffer, block_start, cut)
            events.append((int(frame_field(buffer, b"id: ", block_start, cut) or 0), name, at, self.received))
            if name == "end":
                self._finish()
                return stop
        return start

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(self.events)
        if self.transport is not None:
            self.transport.close()

    def _fail(self, exc: Exception) -> None:
        if not self.head.done():
            self.head.set_exception(exc)
        self._finish()

    def connection_lost(self, exc: Exception | None) -> None:
        # Before the head: the request failed. After it: the stream broke, and what arrived is reported.
        self._fail(exc if isinstance(exc, OSError) else StreamRefused("connection closed"))


async def open_stream(host: str, port: int, path: str) -> tuple[asyncio.Transport, SseWatcher]:
    """A raw SSE request, once its response head (200) has arrived."""
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode()
    loop = asyncio.get_running_loop()
    transport, watcher = await loop.create_connection(lambda: SseWatcher(request), host, port)
    try:
        await watcher.head
    except BaseException:
        transport.close()
        raise
    return transport, watcher


async def watch(host: str, port: int, path: str, settled: Callable[[bool], None]) -> list[Event]:
    """One raw SSE client: (id, event, at, received) for every event until the stream ends.

    ``settled(True)`` once subscribed, ``settled(False)`` when it gave up connecting (then it raises)."""
    for attempt in range(CONNECT_TRIES):
        try:
            transport, watcher = await open_stream(host, port, path)
            break
        except (OSError, StreamRefused):
            if attempt == CONNECT_TRIES - 1:
                settled(False)
                raise
            await asyncio.sleep(CONNECT_BACKOFF_SECONDS[min(attempt, len(CONNECT_BACKOFF_SECONDS) - 1)])
    settled(True)
    try:
        return await watcher.done
    finally:
        transport.close()


def sample_health(url: str, stop: Any, out: Any) -> None:
    """In a process of its own (the watchers' client loop must not delay it): GET /health on one
    connection every 20 ms until ``stop`` is set; sends the latencies (ms; a failure is inf)."""
    latencies: list[float] = []
    with httpx.Client(base_url=url, timeout=60) as client:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                ok = client.get("/health").status_code == 200
            except httpx.HTTPError:
                ok = False
            latencies.append((time.perf_counter() - started) * 1000 if ok else float("inf"))
            time.sleep(0.02)
    out.send(latencies)


def watcher_process(port: int, path: str, count: int, out: Any) -> None:
    """``count`` raw SSE watchers in one client process: sends "ready" once started (its imports must
    not compete with the server during the burst), connects on "go", sends ("connected", ok, failed)
    once every watcher is subscribed or gave up (or the connect timeout passed), then every watcher's
    events (or its error's text)."""
    out.send("ready")
    if out.recv() != "go":
        return

    async def run() -> list[Any]:
        done = asyncio.Event()
        tally = {"ok": 0, "failed": 0}

        def settled(ok: bool) -> None:
            tally["ok" if ok else "failed"] += 1
            if tally["ok"] + tally["failed"] == count:
                done.set()

        tasks = [asyncio.create_task(watch("127.0.0.1", port, path, settled)) for _ in range(count)]
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), CONNECT_TIMEOUT_SECONDS)
        out.send(("connected", tally["ok"], count - tally["ok"]))
        _, pending = await asyncio.wait(tasks, timeout=RUN_TIMEOUT_SECONDS)
        for task in pending:
            task.cancel()
        results: list[Any] = []
        for task in tasks:
            if task in pending:
                results.append("timed out before the stream ended")
            elif task.exception() is not None:
                results.append(repr(task.exception()))
            else:
                results.append(task.result())
        return results

    out.send(client_loop_run(run()))


def client_loop_run(main: Coroutine[Any, Any, T]) -> T:
    """Run the clients on uvloop when it is installed (``BENCH_NO_UVLOOP=1``: the standard loop):
    they share the server's cores, so every CPU second they spend reading is one the server does not
    get, and shows up as its delivery delay."""
    try:
        import uvloop

        if os.environ.get("BENCH_NO_UVLOOP"):
            raise ImportError
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)


def frame_end(buffer: bytes | bytearray, start: int, stop: int) -> int:
    """Where the first frame of ``buffer[start:stop]`` ends (its blank line's first ``\\n``), or -1.

    Line by line rather than ``find(b"\\n\\n")``: a one-byte search is a ``memchr``, while CPython
    looks for a two-byte one a few bytes at a time, and a ``complete`` frame is one 200 KB line (that
    search cost these clients about 150 us per frame, a thousand times at a job's end)."""
    while (line_end := buffer.find(b"\n", start, stop)) >= 0:
        if line_end + 1 < stop and buffer[line_end + 1] == 0x0A:
            return line_end
        start = line_end + 1
    return -1


def frame_field(buffer: bytes | bytearray, prefix: bytes, start: int = 0, end: int | None = None) -> str | None:
    """A small field (``id``, ``event``) of the frame ``buffer[start:end]``, without decoding or copying it."""
    end = len(buffer) if end is None else end
    if buffer.startswith(prefix, start, end):
        begin = start + len(prefix)
    else:
        found = buffer.find(b"\n" + prefix, start, end)
        if found < 0:
            return None
        begin = found + 1 + len(prefix)
    stop = buffer.find(b"\n", begin, end)
    return buffer[begin : stop if stop >= 0 else end].decode()


def publish_time(buffer: bytes | bytearray, start: int, end: int) -> float:
    """The ``at`` of the frame ``buffer[start:end]`` (the server writes it last), read from the bytes'
    tail: a ``complete`` frame carries a base64 PNG, and 1,000 decodes and JSON parses of it in these
    client processes would be counted as the server's delivery delay."""
    close = buffer.rfind(b"}", start, end)
    found = buffer.rfind(b'"at":', start, close)
    return float(buffer[found + 5 : close]) if found >= 0 and close >= 0 else 0.0


# --- the measured run ---------------------------------------------------------------------------


async def _recv(pipe: Any, timeout: float) -> Any:
    if not await asyncio.to_thread(pipe.poll, timeout):
        raise TimeoutError(f"a client process sent nothing in {timeout:.0f} s")
    return pipe.recv()


async def fan_out(
    urls: list[str],
    pids: list[int],
    job_id: str,
    watchers: int,
    release: Callable[[], Awaitable[None]],
    *,
    client_processes: int = 4,
) -> dict[str, Any]:
    """``watchers`` SSE clients of ``job_id`` spread over ``urls`` (in ``client_processes`` processes),
    ``/health`` sampled on ``urls[0]`` while they connect; then ``release()`` lets the job run.
    ``pids``: the HTTP node processes whose CPU seconds and RSS are reported."""
    context = multiprocessing.get_context("spawn")
    stop_health = context.Event()
    health_in, health_out = context.Pipe(duplex=False)
    health = context.Process(target=sample_health, args=(urls[0], stop_health, health_out), daemon=True)
    health.start()
    shares = [watchers // client_processes + (i < watchers % client_processes) for i in range(client_processes)]
    pipes, clients = [], []
    for i, share in enumerate(shares):
        port = int(urls[i % len(urls)].rsplit(":", 1)[1])
        ours, theirs = context.Pipe()
        proc = context.Process(
            target=watcher_process, args=(port, f"/v1/jobs/{job_id}/stream", share, theirs), daemon=True
        )
        proc.start()
        pipes.append(ours)
        clients.append(proc)
    rss_before = [rss_mb(pid) for pid in pids]
    load_start = load_average()
    try:
        for pipe in pipes:
            if await _recv(pipe, 120) != "ready":
                raise RuntimeError("a watcher process did not start")
        await asyncio.sleep(1.0)  # the health sampler is answering before the burst starts
        cpu_start = sum(cpu_seconds(pid) for pid in pids)
        started = time.perf_counter()
        for pipe in pipes:
            pipe.send("go")
        connected = 0
        for pipe in pipes:
            _, ok, _failed = await _recv(pipe, CONNECT_TIMEOUT_SECONDS + 30)
            connected += ok
        connect_seconds = time.perf_counter() - started
        cpu_connected = sum(cpu_seconds(pid) for pid in pids)
        stop_health.set()
        health_ms: list[float] = await _recv(health_in, 60)
        peak = [sum(rss_mb(pid) for pid in pids)]

        async def sample_rss() -> None:
            while True:
                peak[0] = max(peak[0], sum(rss_mb(pid) for pid in pids))
                await asyncio.sleep(0.1)

        sampler = asyncio.create_task(sample_rss())
        cpu_before_run = sum(cpu_seconds(pid) for pid in pids)
        await release()
        results = [item for pipe in pipes for item in await _recv(pipe, RUN_TIMEOUT_SECONDS + 60)]
        cpu_after_run = sum(cpu_seconds(pid) for pid in pids)
        sampler.cancel()
    finally:
        stop_health.set()
        for proc in [*clients, health]:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
    return summarise(
        results,
        watchers=watchers,
        nodes=len(urls),
        connected=connected,
        health_ms=health_ms,
        connect_seconds=connect_seconds,
        cpu_connect=cpu_connected - cpu_start,
        cpu_run=cpu_after_run - cpu_before_run,
        rss=(rss_before, peak[0], [rss_mb(p) for p in pids]),
        load=(load_start, load_average()),
    )


def summarise(
    results: list[Any],
    *,
    watchers: int,
    nodes: int,
    connected: int,
    health_ms: list[float],
    connect_seconds: float,
    cpu_connect: float,
    cpu_run: float,
    rss: tuple[list[float], float, list[float]],
    load: tuple[float, float],
) -> dict[str, Any]:
    lists: list[list[Event]] = [r for r in results if isinstance(r, list)]
    errors = [r for r in results if not isinstance(r, list)]
    live = [(e[1], (e[3] - e[2]) * 1000) for events in lists for e in events if e[1] != "queued" and e[2] > 0]
    complete = [d for name, d in live if name == "complete"]
    ends = [d for name, d in live if name == "end"]
    every = [d for _, d in live]
    return {
        "watchers": watchers,
        "nodes": nodes,
        "connected": connected,
        "watcher_errors": len(errors),
        "first_error": errors[0] if errors else None,
        "complete_then_end": sum(1 for events in lists if [e[1] for e in events[-2:]] == ["complete", "end"]),
        "terminal_event_ids": sorted({e[0] for events in lists for e in events if e[1] in ("complete", "error")}),
        "events_received": sum(len(events) for events in lists),
        "previews_received": sum(1 for events in lists for e in events if e[1] == "preview"),
        "connect_seconds": round(connect_seconds, 2),
        "terminal_ms_p50": percentile(complete, 0.5),
        "terminal_ms_p99": percentile(complete, 0.99),
        "terminal_ms_max": max(complete, default=float("nan")),
        "end_ms_p50": percentile(ends, 0.5),
        "end_ms_p99": percentile(ends, 0.99),
        "all_events_ms_p50": percentile(every, 0.5),
        "all_events_ms_p99": percentile(every, 0.99),
        "health_samples": len(health_ms),
        "health_failures": sum(1 for h in health_ms if h == float("inf")),
        "health_ms_p50": percentile(health_ms, 0.5),
        "health_ms_p99": percentile(health_ms, 0.99),
        "health_ms_max": max(health_ms, default=float("nan")),
        "server_cpu_s_connect": round(cpu_connect, 2),
        "server_cpu_s_run": round(cpu_run, 2),
        "server_rss_mb_before": rss[0],
        "server_rss_mb_peak": rss[1],
        "server_rss_mb_after": rss[2],
        "load_average_start": load[0],
        "load_average_end": load[1],
    }


def fan_out_rows(w: dict[str, Any], goals: tuple[float, float] = (250.0, 100.0)) -> list[tuple[str, str]]:
    """The fan-out's table rows (both benches print the same)."""

    def f(value: float) -> str:
        return "-" if value != value else f"{value:.0f}"

    inf = f" (failures: {w['health_failures']})" if w["health_failures"] else ""
    return [
        (
            f"{w['watchers']} watchers over {w['nodes']} node(s): complete then end",
            f"{w['complete_then_end']} / {w['watchers']} (connected {w['connected']}, errors {w['watcher_errors']}"
            + (f": {str(w['first_error'])[:120]}" if w["first_error"] else "")
            + ")",
        ),
        (
            "connect burst",
            f"{w['connect_seconds']:.2f} s; node CPU {w['server_cpu_s_connect']:.2f} s connect, "
            f"{w['server_cpu_s_run']:.2f} s run",
        ),
        (
            "complete: publish -> receipt",
            f"p50 {f(w['terminal_ms_p50'])} ms, p99 {f(w['terminal_ms_p99'])} ms, "
            f"max {f(w['terminal_ms_max'])} ms (goal p99 < {goals[0]:.0f})",
        ),
        (
            "all events: publish -> receipt",
            f"p50 {f(w['all_events_ms_p50'])} ms, p99 {f(w['all_events_ms_p99'])} ms "
            f"({w['events_received']} events, {w['previews_received']} previews)",
        ),
        (
            "/health during the burst",
            f"p50 {f(w['health_ms_p50'])} ms, p99 {f(w['health_ms_p99'])} ms, "
            f"max {f(w['health_ms_max'])} ms ({w['health_samples']} samples{inf}; "
            f"goal < {goals[1]:.0f})",
        ),
        (
            "node RSS before / peak / after (MB)",
            f"{sum(w['server_rss_mb_before']):.0f} / {w['server_rss_mb_peak']:.0f} / "
            f"{sum(w['server_rss_mb_after']):.0f}",
        ),
        ("load average at start / end of the fan-out", f"{w['load_average_start']} / {w['load_average_end']}"),
    ]

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
from typing import Any, TypeVar

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


async def open_stream(host: str, port: int, path: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bool]:
    """A raw SSE request; the reader after the response head, and whether the body is chunked."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
        await writer.drain()
        status = await reader.readline()
        if b" 200 " not in status:
            raise StreamRefused(status.decode(errors="replace").strip() or "connection closed")
        chunked = False
        while (line := await reader.readline()) not in (b"\r\n", b""):
            chunked |= line.lower().startswith(b"transfer-encoding: chunked")
    except BaseException:
        writer.close()
        raise
    return reader, writer, chunked


async def watch(host: str, port: int, path: str, settled: Callable[[bool], None]) -> list[Event]:
    """One raw SSE client: (id, event, at, received) for every event until the stream ends.

    ``settled(True)`` once subscribed, ``settled(False)`` when it gave up connecting (then it raises)."""
    for attempt in range(CONNECT_TRIES):
        try:
            reader, writer, chunked = await open_stream(host, port, path)
            break
        except (OSError, asyncio.IncompleteReadError, StreamRefused):
            if attempt == CONNECT_TRIES - 1:
                settled(False)
                raise
            await asyncio.sleep(CONNECT_BACKOFF_SECONDS[min(attempt, len(CONNECT_BACKOFF_SECONDS) - 1)])
    settled(True)
    events: list[Event] = []
    buffer = b""
    try:
        while True:
            if chunked:
                size = int((await reader.readline()).strip() or b"0", 16)
                if size == 0:
                    break
                data = await reader.readexactly(size)
                await reader.readexactly(2)  # the chunk's CRLF
            else:
                data = await reader.read(65536)
                if not data:
                    break
            received = time.time()
            # Frames end with their chunk (the server writes whole frames), so the buffer is nearly
            # always empty here: no copy of a 200 KB ``complete`` frame, and frames are read in place.
            buffer = buffer + data if buffer else data
            start = 0
            while (cut := buffer.find(b"\n\n", start)) >= 0:
                block_start, start = start, cut + 2
                name = frame_field(buffer, b"event: ", block_start, cut)
                if name is None:
                    continue
                # ``end`` carries rbee's marker, not JSON: its delay is counted from the terminal
                # event's publish time (the stream's last frame after the job is done).
                at = (events[-1][2] if events else received) if name == "end" else publish_time(buffer, cut)
                events.append((int(frame_field(buffer, b"id: ", block_start, cut) or 0), name, at, received))
                if name == "end":
                    return events
            buffer = buffer[start:] if start < len(buffer) else b""
    except (OSError, asyncio.IncompleteReadError):
        pass  # the stream broke: what arrived is reported (without its end)
    finally:
        writer.close()
    return events


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


def frame_field(buffer: bytes, prefix: bytes, start: int = 0, end: int | None = None) -> str | None:
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


def publish_time(buffer: bytes, end: int | None = None) -> float:
    """The ``at`` of the frame ending at ``end`` (the server writes it last), read from the bytes' tail: a
    ``complete`` frame carries a base64 PNG, and 1,000 decodes and JSON parses of it in these client
    processes would be counted as the server's delivery delay."""
    end = len(buffer) if end is None else end
    close = buffer.rfind(b"}", 0, end)
    start = buffer.rfind(b'"at":', 0, close)
    return float(buffer[start + 5 : close]) if start >= 0 else 0.0


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

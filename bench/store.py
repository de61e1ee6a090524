"""What keeping jobs costs, per store (memory, SQLite, Redis), in one run.

1. **submit**: ``JobService.submit`` latency, p50/p99 (SQLite: the job is on disk, ``synchronous=FULL``,
   before it returns; Redis: the submit script plus ``WAITAOF`` where the server has it).
2. **per event**: what one step event costs the GPU side (``Lease.publish``: the bus plus the store's
   write; Redis: until the lease's outbox is flushed), and, for SQLite, the store's own write timed
   directly, as a share of a demo step: the demo pipeline's step on one CPU thread, timed in the same
   run (``--step-ms`` gives a fixed figure instead).
3. **soak**: ``--soak`` jobs through submit, claim, ``--events`` steps and complete with a PNG, under
   the store's retention (``--max-results``): RSS, open files and (SQLite) the data folder's size at
   every fifth of the run; flat numbers mean nothing grows without bound.

    .venv/bin/python bench/store.py                      # all three (Redis: needs redis-server on PATH)
    .venv/bin/python bench/store.py --stores memory,sqlite --soak 100

Prints a table and writes JSON (``--json``, default bench/results/store.json).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from PIL import Image  # noqa: E402

from sdworker.domain.request import GenerationRequest  # noqa: E402
from sdworker.engine.fake import FakeEngine  # noqa: E402
from sdworker.events.types import StepProgressed  # noqa: E402
from sdworker.jobs.metrics import ServiceMetrics  # noqa: E402
from sdworker.jobs.protocol import JobService, JobSource, Lease  # noqa: E402
from sdworker.jobs.service import LocalJobService  # noqa: E402
from sdworker.jobs.spec import JobDraft  # noqa: E402
from sdworker.settings import Settings  # noqa: E402
from sdworker.stores.memory import MemoryStore  # noqa: E402
from sdworker.stores.sqlite import SqliteStore  # noqa: E402


def png(seed: int, size: int = 128) -> bytes:
    out = io.BytesIO()
    Image.frombytes("RGB", (size, size), os.urandom(size * size * 3) if seed >= 0 else b"\0" * size * size * 3).save(
        out, "PNG")
    return out.getvalue()


def draft(seed: int) -> JobDraft:
    return JobDraft(GenerationRequest("a lighthouse", num_inference_steps=20, width=64, height=64, seed=seed))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class RedisProcess:
    def __init__(self, folder: Path) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--save", "", "--appendonly", "no", "--dir", str(folder)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def open_store(name: str, folder: Path, redis_url: str | None, **settings: Any
                     ) -> tuple[JobService, JobSource, Any]:
    base = {"model": FakeEngine().model, "max_queue": 100_000, **settings}
    metrics = ServiceMetrics()
    if name == "redis":
        from sdworker.stores.redis.service import RedisJobService
        from sdworker.stores.redis.source import RedisJobSource

        config = Settings(**base, redis_url=redis_url, redis_prefix=f"b{os.getpid()}{int(time.time() * 1000)}")
        service = RedisJobService(config, metrics)
        source = RedisJobSource(config, metrics=metrics)
        await service.start()
        await source.set_engine(FakeEngine().info, state="ready")
        while not (await service.fleet(fresh=True)).workers:
            await asyncio.sleep(0.05)
        return service, source, None
    store = SqliteStore(folder) if name == "sqlite" else MemoryStore()
    local = LocalJobService(Settings(**base), metrics, store=store)
    await local.start()
    await local.set_engine(FakeEngine().info, state="ready")
    return local, local, store


async def close(service: JobService, source: JobSource) -> None:
    source.stop_claiming()
    if source is not service:
        await source.close()
    await service.close()


async def claim(source: JobSource, name: str) -> Lease:
    models = (FakeEngine().model,) if name == "redis" else None
    while True:
        leases = await source.claim(models, wait_seconds=0.5)
        if leases:
            return leases[0]


async def flushed(lease: Lease) -> None:
    flush = getattr(lease, "_flush", None)  # Redis: its outbox is written in order by a task
    if flush is not None:
        await flush()


async def measure(name: str, args: argparse.Namespace, redis_url: str | None) -> dict[str, Any]:
    folder = Path(tempfile.mkdtemp(prefix=f"bench-store-{name}-"))
    try:
        service, source, store = await open_store(name, folder, redis_url)
        submits = []
        for n in range(args.submits):
            start = time.perf_counter()
            await service.submit(draft(n))
            submits.append(time.perf_counter() - start)
        lease = await claim(source, name)
        start = time.perf_counter()
        for step in range(1, args.events + 1):
            lease.publish(StepProgressed(job_id=lease.spec.job_id, step=step, total=args.events))
        await flushed(lease)
        per_event = (time.perf_counter() - start) / args.events
        direct = None
        if isinstance(store, SqliteStore):
            start = time.perf_counter()
            for step in range(args.events):
                store.append_event(StepProgressed(job_id="direct", seq=step + 1, at=time.time(), step=step, total=1))
            direct = (time.perf_counter() - start) / args.events
        await close(service, source)
        soak = await run_soak(name, folder / "soak", args, redis_url)
        return {
            "store": name,
            "submit_p50_ms": percentile(submits, 0.5) * 1000,
            "submit_p99_ms": percentile(submits, 0.99) * 1000,
            "event_us": per_event * 1e6,
            "store_write_us": direct * 1e6 if direct is not None else None,
            "store_write_share_of_step": (direct * 1000 / args.step_ms) if direct is not None else None,
            "soak": soak,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def run_soak(name: str, folder: Path, args: argparse.Namespace, redis_url: str | None) -> list[dict[str, Any]]:
    service, source, _ = await open_store(name, folder, redis_url, max_results=args.max_results)
    image = png(1)
    samples = []
    try:
        for n in range(1, args.soak + 1):
            await service.submit(draft(n))
            lease = await claim(source, name)
            for step in range(1, args.soak_events + 1):
                lease.publish(StepProgressed(job_id=lease.spec.job_id, step=step, total=args.soak_events))
            await flushed(lease)
            await lease.complete((image,), (n,), 128, 128)
            if n % max(1, args.soak // 5) == 0:
                samples.append({"jobs": n, "rss_mib": rss_bytes() / 2**20, "open_files": open_files(),
                                "data_mib": folder_bytes(folder) / 2**20 if folder.exists() else 0.0})
    finally:
        await close(service, source)
    return samples


def demo_step_ms(rounds: int = 3) -> float:
    """One UNet step of the demo model at its 64 px on one CPU thread: the difference between a 12-step
    and a 2-step call (so the text encoder, VAE and set-up cancel out), the fastest of ``rounds``."""
    import torch

    from bench.archs import ARCHS

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        pipe = ARCHS["demo"]()
        pipe.set_progress_bar_config(disable=True)

        def call(steps: int) -> float:
            started = time.perf_counter()
            pipe("a lighthouse", num_inference_steps=steps, width=64, height=64,
                 generator=torch.Generator().manual_seed(0))
            return time.perf_counter() - started

        call(2)  # warm-up
        return min(call(12) - call(2) for _ in range(rounds)) / 10 * 1000
    finally:
        torch.set_num_threads(threads)


def print_table(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(f"\nsubmit ({args.submits} jobs), per step event ({args.events} events), demo step = {args.step_ms} ms\n")
    print("| store | submit p50 ms | submit p99 ms | publish per event µs | store write per event µs | share of step |")
    print("|---|---|---|---|---|---|")
    for r in results:
        write = f"{r['store_write_us']:.1f}" if r["store_write_us"] is not None else "-"
        share = f"{100 * r['store_write_share_of_step']:.2f} %" if r["store_write_share_of_step"] is not None else "-"
        print(f"| {r['store']} | {r['submit_p50_ms']:.2f} | {r['submit_p99_ms']:.2f} | {r['event_us']:.1f} "
              f"| {write} | {share} |")
    print(f"\nsoak: {args.soak} jobs x {args.soak_events} events, max_results {args.max_results}\n")
    print("| store | jobs | RSS MiB | open files | data MiB |\n|---|---|---|---|---|")
    for r in results:
        for s in r["soak"]:
            print(f"| {r['store']} | {s['jobs']} | {s['rss_mib']:.1f} | {s['open_files']} | {s['data_mib']:.2f} |")


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    names = [n for n in args.stores.split(",") if n]
    redis = None
    if "redis" in names and args.redis is None:
        if shutil.which("redis-server") is None:
            print("redis-server not on PATH: Redis skipped", file=sys.stderr)
            names.remove("redis")
        else:
            redis = RedisProcess(Path(tempfile.mkdtemp(prefix="bench-redis-")))
    try:
        url = args.redis or (redis.url if redis is not None else None)
        return [await measure(name, args, url) for name in names]
    finally:
        if redis is not None:
            redis.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stores", default="memory,sqlite,redis")
    parser.add_argument("--redis", default=None, help="a running Redis (default: start redis-server)")
    parser.add_argument("--submits", type=int, default=300)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--step-ms", type=float, default=None,
                        help="a demo step in ms (default: time the demo pipeline's step on one CPU thread)")
    parser.add_argument("--soak", type=int, default=500)
    parser.add_argument("--soak-events", type=int, default=20)
    parser.add_argument("--max-results", type=int, default=100)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "store.json")
    args = parser.parse_args(argv)
    if args.step_ms is None:
        args.step_ms = demo_step_ms()
    results = asyncio.run(main_async(args))
    print_table(results, args)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "results": results},
                                    indent=2))
    print(f"\nwritten: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""How a Redis fleet scales, and what Redis costs per event.

1. **Throughput**: the same ``--jobs`` demo jobs (same specs and seeds) through one ``sdworker worker``
   and then through two (one torch thread each; nobody watches, so no previews are decoded), behind
   one ``sdworker api`` node. Jobs per minute = jobs / (first POST to the last job finished);
   the ratio two/one is the scaling (target >= 1.7 on a 2-core machine, where the API node and
   redis-server share the same cores).
2. **Event latency**: one job of ``--latency-steps`` steps watched by one raw SSE client, through
   Redis (API node + worker) and through the memory backend (``sdworker serve``): the delay from
   publish (the event's ``at`` stamp: Redis's TIME inside the Lua script, or the bus's clock) to
   receipt, p50/p99 over the progress events.
3. **1,000 watchers over 2 API nodes**: half on each node, subscribed while the job waits in the
   queue behind blockers (cancelled once every watcher is connected); every watcher must get the
   terminal event; delay p50/p99 of that event.
4. **Batching in the fleet**: the same jobs through two workers with ``--max-batch 2`` (a fresh fleet
   on its own prefix) against the two ``--max-batch 1`` workers of (1); jobs per minute and how many
   jobs ran as a batch partner (the worker logs' "share each UNet call" lines).
5. **A deep queue**: ``--depth`` (10,000) jobs queued for a model with no worker (``--expect-models``),
   submitted by 4 concurrent clients; then ``--depth-probe`` more submits at that depth (p50/p99), Redis
   memory per queued job, and the claim script's own time in Redis's slow log
   (``slowlog-log-slower-than 0``) while one worker claims jobs from the top of that queue.

    .venv/bin/python bench/scale.py                                  # about 2 min on 2 cores
    .venv/bin/python bench/scale.py --jobs 2 --steps 2 --size 64 --watchers 20 --latency-steps 5 --depth 200  # smoke

Starts its own redis-server (append-only file on) on a free port. Prints a table and writes JSON
(``--json``, default bench/results/scale.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `sdworker` importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.service import free_port, percentile  # noqa: E402
from bench.watchers import watch  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk"
TARGET_RATIO = 1.7
FLEET_ARGS = ["--lease-heartbeat-seconds", "1", "--claim-idle-seconds", "10"]


class Procs:
    """Every subprocess this benchmark starts, stopped (SIGTERM, then SIGKILL) at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
                    "HF_HUB_OFFLINE": "1", "SDWORKER_CACHE_DIR": str(workdir / "cache"), "PYTHONPATH": str(ROOT)}
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


@contextmanager
def redis_server(procs: Procs) -> Iterator[str]:
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    folder = procs.workdir / "redis"
    folder.mkdir()
    process = procs.start("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                                    "--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction"])
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


def wait_for(url: str, predicate: Any, timeout: float = 300.0) -> Any:
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


def api_node(procs: Procs, redis_url: str, prefix: str, name: str, max_steps: int) -> str:
    port = free_port()
    procs.sdworker(name, "api", "--redis", redis_url, "--redis-prefix", prefix, "--port", str(port),
                   "--max-queue", "5000", "--max-steps", str(max_steps), *FLEET_ARGS)
    url = f"http://127.0.0.1:{port}"
    wait_for(url + "/health", lambda r: r.status_code == 200)
    return url


def worker(procs: Procs, redis_url: str, prefix: str, index: int) -> subprocess.Popen[bytes]:
    return procs.sdworker(f"{prefix}-w{index}", "worker", "--redis", redis_url, "--redis-prefix", prefix,
                          "--model", "demo", "--worker-id", f"{prefix}-w{index}", "--shutdown-grace-seconds", "1",
                          *FLEET_ARGS)


def wait_workers(api: str, count: int) -> None:
    wait_for(api + "/v1/workers", lambda r: sum(w["status"] == "ready" for w in r.json()["workers"]) >= count)


def job_body(args: argparse.Namespace, seed: int, steps: int | None = None) -> dict[str, Any]:
    return {"prompt": PROMPT, "steps": steps or args.steps, "width": args.size, "height": args.size, "seed": seed,
            "preview": {"every": 0}}


async def run_batch(api: str, args: argparse.Namespace) -> dict[str, Any]:
    """Submit ``--jobs`` jobs at once; seconds from the first POST to the last job's ``finished_at``.

    The end is the job records' own time (Redis's clock), so how often this polls does not change
    the number; it polls gently (one job every 0.2 s) so the API node does not take CPU from the
    workers it is measuring."""
    async with httpx.AsyncClient(timeout=60) as client:
        started = time.time()
        ids = []
        for i in range(args.jobs):
            response = await client.post(api + "/v1/jobs", json=job_body(args, seed=1000 + i))
            response.raise_for_status()
            ids.append(response.json()["job_id"])
        finished: list[float] = []
        by_worker: dict[str, int] = {}
        for job_id in ids:
            while True:
                view = (await client.get(f"{api}/v1/jobs/{job_id}")).json()
                if view["status"] in ("completed", "failed", "cancelled"):
                    break
                await asyncio.sleep(0.2)
            if view["status"] != "completed":
                raise RuntimeError(f"job {job_id} ended {view['status']}: {view.get('error')}")
            finished.append(datetime.fromisoformat(view["finished_at"].replace("Z", "+00:00")).timestamp())
            by_worker[view["worker"]] = by_worker.get(view["worker"], 0) + 1
    seconds = max(finished) - started
    return {"seconds": seconds, "jobs_per_minute": 60.0 * args.jobs / seconds, "jobs_by_worker": by_worker}


def throughput(procs: Procs, redis_url: str, prefix: str, api: str, args: argparse.Namespace) -> dict[str, Any]:
    """One worker, then a second joins the same fleet (a worker takes seconds to start: each starts once)."""
    result: dict[str, Any] = {}
    for count in (1, 2):
        worker(procs, redis_url, prefix, count)
        wait_workers(api, count)
        asyncio.run(run_batch(api, _warm(args, count)))  # a new worker's first job pays for warm-up
        result[f"workers_{count}"] = asyncio.run(run_batch(api, args))
    result["ratio"] = result["workers_2"]["jobs_per_minute"] / result["workers_1"]["jobs_per_minute"]
    return result


def _warm(args: argparse.Namespace, jobs: int = 2) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), "jobs": jobs, "steps": 2})


async def one_stream_latency(api: str, args: argparse.Namespace) -> list[float]:
    host, port = api.removeprefix("http://").split(":")
    async with httpx.AsyncClient(timeout=60) as client:
        response = await client.post(api + "/v1/jobs", json=job_body(args, seed=5, steps=args.latency_steps))
        response.raise_for_status()
        job_id = response.json()["job_id"]
    events = await watch(host, int(port), f"/v1/jobs/{job_id}/stream", asyncio.Event(), [0], 1)
    return [received - at for _, name, at, received in events if name == "progress" and at > 0]


def latency(api: str, memory_url: str, args: argparse.Namespace) -> dict[str, Any]:
    asyncio.run(one_stream_latency(api, _warm(args)))
    through_redis = asyncio.run(one_stream_latency(api, args))
    asyncio.run(one_stream_latency(memory_url, _warm(args)))
    in_memory = asyncio.run(one_stream_latency(memory_url, args))
    return {name: {"events": len(values), "p50_ms": 1000 * percentile(values, 0.50),
                   "p99_ms": 1000 * percentile(values, 0.99)}
            for name, values in (("redis", through_redis), ("memory", in_memory))}


def memory_server(procs: Procs, args: argparse.Namespace) -> str:
    """``sdworker serve`` (memory backend), for the latency comparison; started early, it loads meanwhile."""
    port = free_port()
    procs.sdworker("serve-memory", "serve", "--model", "demo", "--port", str(port), "--max-steps", str(args.max_steps))
    return f"http://127.0.0.1:{port}"


async def spread_watchers(apis: list[str], args: argparse.Namespace) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=60) as client:
        blockers = []
        for seed in (1, 2):  # one per worker: the watched job waits in the queue behind them
            response = await client.post(apis[0] + "/v1/jobs", json=job_body(args, seed, steps=args.max_steps))
            blockers.append(response.json()["job_id"])
        response = await client.post(apis[0] + "/v1/jobs", json=job_body(args, seed=3))
        job_id = response.json()["job_id"]
        connected = asyncio.Event()
        counter = [0]
        tasks = []
        for i in range(args.watchers):
            host, port = apis[i % len(apis)].removeprefix("http://").split(":")
            tasks.append(asyncio.create_task(
                watch(host, int(port), f"/v1/jobs/{job_id}/stream", connected, counter, args.watchers)))
            if i % 100 == 99:
                await asyncio.sleep(0)  # let the connections start in waves
        await asyncio.wait_for(connected.wait(), 300)
        for blocker in blockers:
            await client.delete(f"{apis[1]}/v1/jobs/{blocker}")
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 600)
    # A stream's last event is ``end``; the terminal event is the one before it.
    terminal = [r[-2] for r in results if isinstance(r, list) and len(r) > 1 and r[-2][1] in ("complete", "error")]
    delays = [received - at for _, _, at, received in terminal if at > 0]
    return {
        "watchers": args.watchers,
        "nodes": len(apis),
        "got_terminal": len(terminal),
        "errors": sum(1 for r in results if isinstance(r, BaseException)),
        "terminal_p50_ms": 1000 * percentile(delays, 0.50) if delays else None,
        "terminal_p99_ms": 1000 * percentile(delays, 0.99) if delays else None,
    }


def batching(procs: Procs, redis_url: str, args: argparse.Namespace, unbatched: dict[str, Any]) -> dict[str, Any]:
    """Two ``--max-batch 2`` workers on a fleet of their own, the same jobs as the throughput run."""
    prefix = f"batch-{uuid.uuid4().hex[:6]}"
    api = api_node(procs, redis_url, prefix, "api-batch", args.max_steps)
    started = [procs.sdworker(f"{prefix}-w{i}", "worker", "--redis", redis_url, "--redis-prefix", prefix, "--model",
                              "demo", "--worker-id", f"{prefix}-w{i}", "--shutdown-grace-seconds", "1",
                              "--max-batch", "2", *FLEET_ARGS) for i in (1, 2)]
    wait_workers(api, 2)
    asyncio.run(run_batch(api, _warm(args, 2)))
    logs = [procs.workdir / f"{prefix}-w{i}.log" for i in (1, 2)]
    before = sum(path.read_text(errors="replace").count("share each UNet call") for path in logs)
    on = asyncio.run(run_batch(api, args))
    batches = sum(path.read_text(errors="replace").count("share each UNet call") for path in logs) - before
    for process in started:
        procs.stop(process)
    return {"off": unbatched, "on": {**on, "batches": batches},
            "ratio": on["jobs_per_minute"] / unbatched["jobs_per_minute"]}


async def _submit_many(api: str, body: dict[str, Any], count: int, clients: int = 4) -> list[float]:
    """``count`` submits by ``clients`` concurrent clients; each submit's seconds."""
    latencies: list[float] = []
    left = [count]

    async def client_loop() -> None:
        async with httpx.AsyncClient(timeout=60) as client:
            while left[0] > 0:
                left[0] -= 1
                start = time.perf_counter()
                response = await client.post(api + "/v1/jobs", json=body)
                latencies.append(time.perf_counter() - start)
                if response.status_code != 202:
                    raise RuntimeError(f"submit answered {response.status_code}: {response.text[:200]}")

    await asyncio.gather(*(client_loop() for _ in range(clients)))
    return latencies


def deep_queue(procs: Procs, redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    import hashlib

    import redis

    from sdworker.stores.redis import scripts

    prefix = f"depth-{uuid.uuid4().hex[:6]}"
    port = free_port()
    procs.sdworker("api-depth", "api", "--redis", redis_url, "--redis-prefix", prefix, "--port", str(port),
                   "--max-queue", str(args.depth + args.depth_probe + 10), "--expect-models", "demo",
                   "--queue-timeout-seconds", "86400", *FLEET_ARGS)
    api = f"http://127.0.0.1:{port}"
    wait_for(api + "/health", lambda r: r.status_code == 200)
    client = redis.Redis.from_url(redis_url)
    body = {"prompt": PROMPT, "model": "demo", "steps": 2, "width": 64, "height": 64, "preview": {"every": 0}}
    memory_before = int(client.info("memory")["used_memory"])
    asyncio.run(_submit_many(api, body, args.depth))
    memory_after = int(client.info("memory")["used_memory"])
    probe = asyncio.run(_submit_many(api, body, args.depth_probe))
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 100_000)
    client.slowlog_reset()
    claimer = procs.sdworker(f"{prefix}-w1", "worker", "--redis", redis_url, "--redis-prefix", prefix, "--model",
                             "demo", "--worker-id", f"{prefix}-w1", "--shutdown-grace-seconds", "1", *FLEET_ARGS)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and int(client.zcard(f"{prefix}:queued")) > args.depth + args.depth_probe - 10:
        time.sleep(0.2)
    procs.stop(claimer)
    log = client.slowlog_get(100_000)
    client.config_set("slowlog-log-slower-than", 10_000)
    client.close()
    shas = {hashlib.sha1(getattr(scripts, name).encode()).hexdigest(): name.lower()
            for name in ("CLAIM", "PARTNERS", "POSITIONS", "SUBMIT")}
    times: dict[str, list[float]] = {}
    for entry in log:
        command = [c.decode(errors="replace") if isinstance(c, bytes) else str(c) for c in entry["command"].split()] \
            if isinstance(entry["command"], bytes | str) else []
        if len(command) > 1 and command[0].upper() == "EVALSHA" and command[1] in shas:
            times.setdefault(shas[command[1]], []).append(entry["duration"] / 1000.0)  # microseconds -> ms
    claims = times.get("claim", [])
    return {
        "depth": args.depth,
        "submit_p50_ms": 1000 * percentile(probe, 0.50),
        "submit_p99_ms": 1000 * percentile(probe, 0.99),
        "submits_probed": len(probe),
        "memory_mb": (memory_after - memory_before) / 2**20,
        "memory_bytes_per_job": (memory_after - memory_before) / args.depth,
        "claims": len(claims),
        "claim_p50_ms": percentile(claims, 0.50) if claims else None,
        "claim_max_ms": max(claims) if claims else None,
        "script_max_ms": {name: max(values) for name, values in times.items()},
    }


def print_table(result: dict[str, Any]) -> None:
    t = result["throughput"]
    rows = [
        (f"throughput, {n} worker{'s' if n > 1 else ''}",
         f"{t[f'workers_{n}']['jobs_per_minute']:.1f} jobs/min ({t[f'workers_{n}']['seconds']:.1f} s)")
        for n in (1, 2)
    ]
    rows.append(("scaling 2/1", f"{t['ratio']:.2f}x (target >= {TARGET_RATIO}x)"))
    for name, row in result["latency"].items():
        rows.append((f"event latency, {name}", f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms "
                                               f"({row['events']} events)"))
    w = result.get("watchers")
    if w:
        p50 = "-" if w["terminal_p50_ms"] is None else f"{w['terminal_p50_ms']:.0f}"
        p99 = "-" if w["terminal_p99_ms"] is None else f"{w['terminal_p99_ms']:.0f}"
        rows.append((f"{w['watchers']} watchers / {w['nodes']} nodes",
                     f"{w['got_terminal']} got the terminal event; p50 {p50} ms, p99 {p99} ms"))
    b = result.get("batching")
    if b:
        rows.append(("2 workers, --max-batch 1", f"{b['off']['jobs_per_minute']:.1f} jobs/min"))
        rows.append(("2 workers, --max-batch 2", f"{b['on']['jobs_per_minute']:.1f} jobs/min "
                                                 f"({b['on']['batches']} shared batches; {b['ratio']:.2f}x)"))
    d = result.get("depth")
    if d:
        claim = "-" if d["claim_p50_ms"] is None else f"p50 {d['claim_p50_ms']:.3f} ms, max {d['claim_max_ms']:.3f} ms"
        rows.append((f"claim script at {d['depth']} queued", f"{claim} ({d['claims']} claims, Redis slow log)"))
        rows.append((f"submit at {d['depth']} queued, 4 clients", f"p50 {d['submit_p50_ms']:.1f} ms, "
                     f"p99 {d['submit_p99_ms']:.1f} ms ({d['submits_probed']} submits)"))
        rows.append((f"Redis memory for {d['depth']} queued", f"{d['memory_mb']:.1f} MB "
                                                              f"({d['memory_bytes_per_job']:.0f} bytes/job)"))
    width = max(len(name) for name, _ in rows)
    print(f"\nsdworker scale bench: {result['jobs']} jobs x {result['steps']} steps at {result['size']} px, "
          f"{result['cpus']} CPUs")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--latency-steps", type=int, default=100)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--max-steps", type=int, default=3000, help="API nodes' limit (the blockers use it)")
    parser.add_argument("--depth", type=int, default=10_000, help="queued jobs for the deep-queue measurements")
    parser.add_argument("--depth-probe", type=int, default=400, help="submits timed at that depth")
    parser.add_argument("--skip", default="", help="comma list of sections to skip: watchers, batching, depth")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sdworker-scale-") as tmp:
        workdir = Path(tmp)
        from sdworker.engine.demo_model import ensure_demo_model

        ensure_demo_model(workdir / "cache")
        procs = Procs(workdir)
        try:
            memory_url = memory_server(procs, args)
            with redis_server(procs) as redis_url:
                prefix = f"scale-{uuid.uuid4().hex[:6]}"
                apis = [api_node(procs, redis_url, prefix, f"api{i}", args.max_steps) for i in range(2)]
                result: dict[str, Any] = {
                    "jobs": args.jobs, "steps": args.steps, "size": args.size, "cpus": os.cpu_count(),
                    "python": platform.python_version(),
                    "throughput": throughput(procs, redis_url, prefix, apis[0], args),
                }
                wait_for(memory_url + "/ready", lambda r: r.status_code == 200)
                result["latency"] = latency(apis[0], memory_url, args)
                skip = set(args.skip.split(","))
                if "watchers" not in skip:
                    result["watchers"] = asyncio.run(spread_watchers(apis, args))
                for process in [p for p in procs.running if "-w" in " ".join(map(str, p.args))]:
                    procs.stop(process)  # the first fleet's workers: the next sections get the CPUs
                if "batching" not in skip:
                    result["batching"] = batching(procs, redis_url, args, result["throughput"]["workers_2"])
                if "depth" not in skip:
                    result["depth"] = deep_queue(procs, redis_url, args)
        except BaseException:
            for log in sorted(workdir.glob("*.log")):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
            raise
        finally:
            procs.stop_all()
    result["target_ratio"] = TARGET_RATIO
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

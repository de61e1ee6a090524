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
3. **1,000 watchers over 2 API nodes** (``bench/watchers.py: fan_out``, the same run as
   ``bench/service.py``'s on one ``serve``): half on each node, in 4 client processes, subscribed while
   the job (64 px, ``--watch-steps``, a preview every step) waits behind one blocker per worker; every
   watcher must get ``complete`` then ``end``; delay p50/p99 of the terminal event (goal p99 < 250 ms),
   and ``/health`` on the first node through the connect burst (goal < 100 ms).
4. **Batching in the fleet**: the same jobs through two workers with ``--max-batch 2`` (a fresh fleet
   on its own prefix) against the two ``--max-batch 1`` workers of (1); jobs per minute and how many
   jobs ran as a batch partner (the worker logs' "share each UNet call" lines).
5. **A deep queue**: ``--depth`` (10,000) jobs queued for a model with no worker (``--expect-models``),
   submitted by 4 concurrent clients; then ``--depth-probe`` more submits at that depth (p50/p99), Redis
   memory per queued job, and the claim script's own time in Redis's slow log
   (``slowlog-log-slower-than 0``) while one worker claims jobs from the top of that queue.

    .venv/bin/python bench/scale.py                                  # about 5 min on 2 idle cores
    .venv/bin/python bench/scale.py --jobs 2 --steps 2 --size 64 --watchers 20 --latency-steps 5 --depth 200  # smoke

Every node process runs one torch thread (``--threads``), so two workers on two cores do not fight
over both. A section that fails is reported as an error row; the others still run. Starts its own
redis-server (append-only file on) on a free port. Prints the machine's load average at the start and
the end, a table, and writes JSON (``--json``, default bench/results/scale.json).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `sdworker` importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.harness import (  # noqa: E402
    FLEET_ARGS,
    Procs,
    cpu_seconds,
    free_port,
    load_average,
    ms,
    percentile,
    print_rows,
    raise_fd_limit,
    redis_server,
    wait_for,
    write_json,
)
from bench.watchers import fan_out, fan_out_rows, watch  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk"
TARGET_RATIO = 1.7


def api_node(procs: Procs, redis_url: str, prefix: str, name: str, max_steps: int) -> tuple[str, int]:
    """An ``sdworker api`` node of the fleet ``prefix``; its URL and process id."""
    port = free_port()
    process = procs.sdworker(name, "api", "--redis", redis_url, "--redis-prefix", prefix, "--port", str(port),
                   "--max-queue", "5000", "--max-steps", str(max_steps), "--log-level", "warning", *FLEET_ARGS)
    url = f"http://127.0.0.1:{port}"
    wait_for(url + "/health", lambda r: r.status_code == 200)
    return url, process.pid


def worker(procs: Procs, redis_url: str, prefix: str, index: int, *extra: str) -> subprocess.Popen[bytes]:
    return procs.sdworker(f"{prefix}-w{index}", "worker", "--redis", redis_url, "--redis-prefix", prefix,
                          "--model", "demo", "--worker-id", f"{prefix}-w{index}", "--shutdown-grace-seconds", "1",
                          *extra, *FLEET_ARGS)


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
    load_start = load_average()
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
    return {"seconds": seconds, "jobs_per_minute": 60.0 * args.jobs / seconds, "jobs_by_worker": by_worker,
            "load_average": [load_start, load_average()]}


def throughput(procs: Procs, redis_url: str, prefix: str, api: str, args: argparse.Namespace) -> dict[str, Any]:
    """One worker, then a second joins the same fleet (a worker takes seconds to start: each starts once).
    Each worker is warmed with two jobs of its own before the timed batch (the first job at a new
    size pays for the allocator's warm-up), so both batches time warm workers."""
    result: dict[str, Any] = {"torch_threads_per_worker": procs.threads}
    pids: list[int] = []
    for count in (1, 2):
        pids.append(worker(procs, redis_url, prefix, count).pid)
        wait_workers(api, count)
        asyncio.run(run_batch(api, _warm(args, 2 * count)))
        cpu_before = sum(cpu_seconds(pid) for pid in pids)
        run = asyncio.run(run_batch(api, args))
        # The cores the workers actually got: CPU seconds over wall seconds. Two workers on two free
        # cores get ~2; on a machine busy with other work they get what is left, and the ratio with them.
        run["worker_cores_used"] = round((sum(cpu_seconds(pid) for pid in pids) - cpu_before) / run["seconds"], 2)
        result[f"workers_{count}"] = run
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
    events = await watch(host, int(port), f"/v1/jobs/{job_id}/stream", lambda ok: None)
    return [received - at for _, name, at, received in events if name == "progress" and at > 0]


def latency(api: str, memory_url: str, args: argparse.Namespace) -> dict[str, Any]:
    asyncio.run(one_stream_latency(api, _warm(args)))
    through_redis = asyncio.run(one_stream_latency(api, args))
    asyncio.run(one_stream_latency(memory_url, _warm(args)))
    in_memory = asyncio.run(one_stream_latency(memory_url, args))
    return {name: {"events": len(values), "p50_ms": 1000 * percentile(values, 0.50),
                   "p99_ms": 1000 * percentile(values, 0.99)}
            for name, values in (("redis", through_redis), ("memory", in_memory))}


def memory_server(procs: Procs, args: argparse.Namespace) -> tuple[str, subprocess.Popen[bytes]]:
    """``sdworker serve`` (memory store), for the latency comparison; started early, it loads meanwhile."""
    port = free_port()
    process = procs.sdworker("serve-memory", "serve", "--model", "demo", "--port", str(port), "--store", "memory",
                             "--max-steps", str(args.max_steps), "--log-level", "warning")
    return f"http://127.0.0.1:{port}", process


async def spread_watchers(apis: list[str], pids: list[int], workers: int, args: argparse.Namespace) -> dict[str, Any]:
    """The fan-out over the API nodes: the watched job waits behind one running blocker per worker."""
    async with httpx.AsyncClient(timeout=60) as client:
        blockers = []
        for seed in range(workers):
            response = await client.post(apis[0] + "/v1/jobs", json=job_body(args, seed, steps=args.max_steps))
            response.raise_for_status()
            blockers.append(response.json()["job_id"])
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = [(await client.get(f"{apis[0]}/v1/jobs/{b}")).json()["status"] for b in blockers]
            if all(state == "running" for state in states):
                break
            await asyncio.sleep(0.1)
        watched = {"prompt": PROMPT, "steps": args.watch_steps, "width": 64, "height": 64, "seed": 3,
                   "preview": {"every": 1, "min_interval_ms": 0}}
        response = await client.post(apis[0] + "/v1/jobs", json=watched)
        response.raise_for_status()
        job_id = response.json()["job_id"]

        async def release() -> None:
            for blocker in blockers:
                await client.delete(f"{apis[-1]}/v1/jobs/{blocker}")

        result = await fan_out(apis, pids, job_id, args.watchers, release, client_processes=args.client_processes)
        deadline = time.monotonic() + 60
        while (status := (await client.get(f"{apis[0]}/v1/jobs/{job_id}")).json()["status"]) not in (
                "completed", "failed", "cancelled") and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
    return {**result, "job_status": status}


def batching(procs: Procs, redis_url: str, args: argparse.Namespace, unbatched: dict[str, Any]) -> dict[str, Any]:
    """Two ``--max-batch 2`` workers on a fleet of their own, the same jobs as the throughput run."""
    prefix = f"batch-{uuid.uuid4().hex[:6]}"
    api, _ = api_node(procs, redis_url, prefix, "api-batch", args.max_steps)
    started = [worker(procs, redis_url, prefix, i, "--max-batch", "2") for i in (1, 2)]
    wait_workers(api, 2)
    asyncio.run(run_batch(api, _warm(args, 4)))
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


def command_counts(client: Any) -> dict[str, int]:
    """Redis's own count of each command it has run (``INFO commandstats``)."""
    return {name.removeprefix("cmdstat_"): int(row["calls"]) for name, row in client.info("commandstats").items()}


def deep_queue(procs: Procs, redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    import redis

    from sdworker.stores.redis import scripts

    prefix = f"depth-{uuid.uuid4().hex[:6]}"
    port = free_port()
    api_process = procs.sdworker("api-depth", "api", "--redis", redis_url, "--redis-prefix", prefix, "--port",
                                 str(port), "--max-queue", str(args.depth + args.depth_probe + 10), "--expect-models",
                                 "demo", "--queue-timeout-seconds", "86400", "--log-level", "warning", *FLEET_ARGS)
    api = f"http://127.0.0.1:{port}"
    wait_for(api + "/health", lambda r: r.status_code == 200)
    client = redis.Redis.from_url(redis_url)
    body = {"prompt": PROMPT, "model": "demo", "steps": 2, "width": 64, "height": 64, "preview": {"every": 0}}
    memory_before = int(client.info("memory")["used_memory"])
    asyncio.run(_submit_many(api, body, args.depth))
    memory_after = int(client.info("memory")["used_memory"])
    # The probe: submits at that depth, timed by the client; Redis's command counts over the probe
    # say how many commands (round trips, at most) one submit costs, and the API node's CPU seconds
    # per submit how much of the time is its own Python.
    commands_before = command_counts(client)
    cpu_before = cpu_seconds(api_process.pid)
    load_start = load_average()
    probe = asyncio.run(_submit_many(api, body, args.depth_probe))
    load_end = load_average()
    cpu_per_submit = (cpu_seconds(api_process.pid) - cpu_before) / max(1, args.depth_probe)
    commands_after = command_counts(client)
    per_submit = {name: round((calls - commands_before.get(name, 0)) / max(1, args.depth_probe), 2)
                  for name, calls in commands_after.items() if calls - commands_before.get(name, 0) > 0}
    per_submit.pop("info", None)
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 100_000)
    client.slowlog_reset()
    claimer = worker(procs, redis_url, prefix, 1)
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
        "submit_load_average": [load_start, load_end],
        "api_cpu_ms_per_submit": 1000 * cpu_per_submit,
        "redis_commands_per_submit": per_submit,
        "memory_mb": (memory_after - memory_before) / 2**20,
        "memory_bytes_per_job": (memory_after - memory_before) / args.depth,
        "claims": len(claims),
        "claim_p50_ms": percentile(claims, 0.50) if claims else None,
        "claim_max_ms": max(claims) if claims else None,
        "script_max_ms": {name: max(values) for name, values in times.items()},
    }


def section(result: dict[str, Any], name: str, run: Callable[[], dict[str, Any]]) -> None:
    """Run one section; a failure becomes ``{"error": ...}`` (an error row), not the end of the run."""
    try:
        result[name] = run()
    except Exception as exc:  # report it and go on: the other sections still measure
        traceback.print_exc()
        result[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}


def table_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    t = result.get("throughput", {})
    if "error" in t:
        rows.append(("throughput, 1 and 2 workers", f"ERROR {t['error']}"))
    elif t:
        threads = t["torch_threads_per_worker"]
        for n in (1, 2):
            run = t[f"workers_{n}"]
            rows.append((f"throughput, {n} worker{'s' if n > 1 else ''} ({threads} torch thread each)",
                         f"{run['jobs_per_minute']:.1f} jobs/min ({run['seconds']:.1f} s; workers used "
                         f"{run.get('worker_cores_used', '-')} cores; load {run['load_average'][0]} -> "
                         f"{run['load_average'][1]})"))
        rows.append(("scaling 2/1", f"{t['ratio']:.2f}x (target >= {TARGET_RATIO}x)"))
    latency_rows = result.get("latency", {})
    if "error" in latency_rows:
        rows.append(("event latency", f"ERROR {latency_rows['error']}"))
    else:
        for name, row in latency_rows.items():
            rows.append((f"event latency, {name}", f"p50 {row['p50_ms']:.1f} ms, p99 {row['p99_ms']:.1f} ms "
                                                   f"({row['events']} events)"))
    w = result.get("watchers")
    if w and "error" in w:
        rows.append((f"{result['config']['watchers']} watchers / 2 nodes", f"ERROR {w['error']}"))
    elif w:
        rows.extend(fan_out_rows(w))
    b = result.get("batching")
    if b and "error" in b:
        rows.append(("batching on/off", f"ERROR {b['error']}"))
    elif b:
        rows.append(("2 workers, --max-batch 1", f"{b['off']['jobs_per_minute']:.1f} jobs/min"))
        rows.append(("2 workers, --max-batch 2", f"{b['on']['jobs_per_minute']:.1f} jobs/min "
                                                 f"({b['on']['batches']} shared batches; {b['ratio']:.2f}x)"))
    d = result.get("depth")
    if d and "error" in d:
        rows.append(("deep queue", f"ERROR {d['error']}"))
    elif d:
        claim = "-" if d["claim_p50_ms"] is None else f"p50 {d['claim_p50_ms']:.3f} ms, max {d['claim_max_ms']:.3f} ms"
        rows.append((f"claim script at {d['depth']} queued", f"{claim} ({d['claims']} claims, Redis slow log)"))
        rows.append((f"submit at {d['depth']} queued, 4 clients",
                     f"p50 {ms(d['submit_p50_ms'])} ms, p99 {ms(d['submit_p99_ms'])} ms ({d['submits_probed']} "
                     f"submits; load {d['submit_load_average'][0]} -> {d['submit_load_average'][1]})"))
        commands = ", ".join(f"{name} {count:g}" for name, count in sorted(d["redis_commands_per_submit"].items()))
        rows.append(("  per submit", f"API node CPU {d['api_cpu_ms_per_submit']:.2f} ms; Redis commands: {commands}"))
        rows.append((f"Redis memory for {d['depth']} queued", f"{d['memory_mb']:.1f} MB "
                                                              f"({d['memory_bytes_per_job']:.0f} bytes/job)"))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per node process (0 = torch's default)")
    parser.add_argument("--latency-steps", type=int, default=100)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--watch-steps", type=int, default=4, help="steps of the watched job (a preview each step)")
    parser.add_argument("--client-processes", type=int, default=4, help="processes the watchers' clients run in")
    parser.add_argument("--max-steps", type=int, default=3000, help="API nodes' limit (the blockers use it)")
    parser.add_argument("--depth", type=int, default=10_000, help="queued jobs for the deep-queue measurements")
    parser.add_argument("--depth-probe", type=int, default=400, help="submits timed at that depth")
    parser.add_argument("--skip", default="", help="comma list of sections to skip: watchers, batching, depth")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "scale.json")
    args = parser.parse_args(argv)
    skip = set(args.skip.split(","))
    fd_limit = raise_fd_limit(args.watchers)
    result: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k != "json"}, "cpus": os.cpu_count(),
        "python": platform.python_version(), "fd_limit": fd_limit, "load_average_start": load_average(),
    }
    print(f"load average at start: {result['load_average_start']}", flush=True)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="sdworker-scale-") as tmp:
        workdir = Path(tmp)
        from sdworker.engine.demo_model import ensure_demo_model

        ensure_demo_model(workdir / "cache")
        procs = Procs(workdir, threads=args.threads)
        try:
            memory_url, _ = memory_server(procs, args)
            with redis_server(procs) as redis_url:
                prefix = f"scale-{uuid.uuid4().hex[:6]}"
                nodes = [api_node(procs, redis_url, prefix, f"api{i}", args.max_steps) for i in range(2)]
                apis, api_pids = [url for url, _ in nodes], [pid for _, pid in nodes]
                section(result, "throughput", lambda: throughput(procs, redis_url, prefix, apis[0], args))

                def event_latency() -> dict[str, Any]:
                    wait_for(memory_url + "/ready", lambda r: r.status_code == 200)
                    return latency(apis[0], memory_url, args)

                section(result, "latency", event_latency)
                if "watchers" not in skip:
                    workers = sum(1 for p in procs.running if p.poll() is None and "-w" in " ".join(map(str, p.args)))
                    section(result, "watchers",
                            lambda: asyncio.run(spread_watchers(apis, api_pids, max(1, workers), args)))
                for process in [p for p in procs.running if "-w" in " ".join(map(str, p.args))]:
                    procs.stop(process)  # the first fleet's workers: the next sections get the CPUs
                if "batching" not in skip and "workers_2" in result.get("throughput", {}):
                    section(result, "batching",
                            lambda: batching(procs, redis_url, args, result["throughput"]["workers_2"]))
                if "depth" not in skip:
                    section(result, "depth", lambda: deep_queue(procs, redis_url, args))
        except BaseException:
            procs.print_logs()
            raise
        finally:
            procs.stop_all()
    result["target_ratio"] = TARGET_RATIO
    result["load_average_end"] = load_average()
    result["seconds"] = round(time.monotonic() - started, 1)
    errors = [name for name, value in result.items() if isinstance(value, dict) and "error" in value]
    result["errors"] = errors
    print_rows(f"sdworker scale bench: {args.jobs} jobs x {args.steps} steps at {args.size} px, {result['cpus']} CPUs, "
               f"{result['seconds']:.0f} s; load average {result['load_average_start']} at start, "
               f"{result['load_average_end']} at end", table_rows(result))
    write_json(args.json, result)
    return 1 if errors else 0


if __name__ == "__main__":
    raise SystemExit(main())

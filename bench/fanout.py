"""Fan-out: 1,000 watchers of one job, on one ``serve`` node and over two ``sdworker api`` nodes.

For each setup the watched job waits in the queue behind a blocker job while ``--watchers`` raw SSE
clients (in ``--client-processes`` spawned processes, so one client loop does not add its own lag)
subscribe; ``/health`` is sampled on its own connection every 20 ms through that connect burst.
Then the blocker is cancelled, the watched job runs (previews on) and completes. Reported per setup:

- how many watchers got the terminal ``complete`` followed by ``end`` (must be all);
- the delay from the ``complete`` event's publish stamp (``at``: the bus's clock, or Redis's TIME in
  the fleet) to each watcher's receipt, p50/p99 (goal: p99 under 250 ms);
- ``/health`` latency during the connect burst, p50/p99/max (goal: under 100 ms).

Setups: ``serve`` (one process: HTTP + worker; ``--store`` sqlite by default, as users run it) and
``fleet`` (redis-server, two ``sdworker api`` nodes, one ``sdworker worker``; the watchers split
half and half over the nodes, ``/health`` sampled on the first).

    .venv/bin/python bench/fanout.py                          # both setups, 1,000 watchers
    .venv/bin/python bench/fanout.py --watchers 50 --only serve   # smoke test

Prints a table and writes JSON (``--json``, default bench/results/fanout.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench` and `sdworker` importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.scale import FLEET_ARGS, Procs, redis_server, wait_for  # noqa: E402
from bench.service import free_port, percentile, rss_mb  # noqa: E402
from bench.watchers import sample_health, watcher_process  # noqa: E402

PROMPT = "a lighthouse on a cliff at dusk"
GOAL_TERMINAL_P99_MS = 250.0
GOAL_HEALTH_MS = 100.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far: what the server spent, whatever else the machine
    ran meanwhile (wall-clock latencies on a shared machine move with its load; this does not)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def job_body(steps: int, seed: int, preview_every: int) -> dict[str, Any]:
    return {"prompt": PROMPT, "steps": steps, "width": 64, "height": 64, "seed": seed,
            "preview": {"every": preview_every, "min_interval_ms": 0}}


def sdworker(procs: Procs, args: argparse.Namespace, name: str, *argv: str) -> None:
    """A node process; with ``--profile DIR`` under cProfile (its stats in DIR/NAME.prof at exit)."""
    if args.profile is None:
        procs.sdworker(name, *argv)
        return
    args.profile.mkdir(parents=True, exist_ok=True)
    procs.start(name, [sys.executable, "-m", "cProfile", "-o", str(args.profile / f"{name}.prof"), "-m", "sdworker",
                       *argv])


def serve_node(procs: Procs, args: argparse.Namespace) -> tuple[str, int]:
    port = free_port()
    sdworker(procs, args, "serve", "serve", "--model", "demo", "--port", str(port), "--store", args.store,
                   "--data-dir", str(procs.workdir / "data"), "--max-queue", "8", "--max-steps", "3000",
                   "--log-level", "warning")
    url = f"http://127.0.0.1:{port}"
    wait_for(url + "/ready", lambda r: r.status_code == 200)
    return url, procs.running[-1].pid


def fleet_nodes(procs: Procs, redis_url: str, args: argparse.Namespace) -> tuple[list[str], list[int]]:
    prefix = f"fanout-{uuid.uuid4().hex[:6]}"
    urls, pids = [], []
    for i in range(2):
        port = free_port()
        sdworker(procs, args, f"api{i}", "api", "--redis", redis_url, "--redis-prefix", prefix, "--port", str(port),
                       "--max-queue", "100", "--max-steps", "3000", "--log-level", "warning", *FLEET_ARGS)
        urls.append(f"http://127.0.0.1:{port}")
        pids.append(procs.running[-1].pid)
    procs.sdworker("worker", "worker", "--redis", redis_url, "--redis-prefix", prefix, "--model", "demo",
                   "--worker-id", f"{prefix}-w0", "--shutdown-grace-seconds", "1", "--log-level", "warning",
                   *FLEET_ARGS)
    for url in urls:
        wait_for(url + "/health", lambda r: r.status_code == 200)
    wait_for(urls[0] + "/v1/workers", lambda r: any(w["status"] == "ready" for w in r.json()["workers"]))
    return urls, pids


async def watch_one_job(urls: list[str], pids: list[int], args: argparse.Namespace) -> dict[str, Any]:
    """The measured run: blocker, watched job, watchers spread over ``urls``, /health on the first."""
    first = urls[0]
    async with httpx.AsyncClient(timeout=120) as client:
        blocker = (await client.post(first + "/v1/jobs", json=job_body(3000, 1, 0))).json()["job_id"]
        while (await client.get(f"{first}/v1/jobs/{blocker}")).json()["status"] != "running":
            await asyncio.sleep(0.05)
        job_id = (await client.post(first + "/v1/jobs", json=job_body(args.steps, 2, 1))).json()["job_id"]
        rss_before = [rss_mb(pid) for pid in pids]
        context = multiprocessing.get_context("spawn")
        stop_health = context.Event()
        health_in, health_out = context.Pipe(duplex=False)
        health = context.Process(target=sample_health, args=(first, stop_health, health_out))
        health.start()
        shares = [args.watchers // args.client_processes + (i < args.watchers % args.client_processes)
                  for i in range(args.client_processes)]
        pipes, workers = [], []
        for i, share in enumerate(shares):
            port = int(urls[i % len(urls)].rsplit(":", 1)[1])
            ours, theirs = context.Pipe()
            proc = context.Process(target=watcher_process, args=(port, f"/v1/jobs/{job_id}/stream", share, theirs))
            proc.start()
            pipes.append(ours)
            workers.append(proc)
        for pipe in pipes:
            if not await asyncio.to_thread(pipe.poll, 120) or pipe.recv() != "ready":
                raise RuntimeError("a watcher process did not start")
        await asyncio.sleep(1.0)  # the health sampler is answering before the burst starts
        cpu_start = sum(cpu_seconds(pid) for pid in pids)
        started = time.perf_counter()
        for pipe in pipes:
            pipe.send("go")
        for pipe in pipes:
            if not await asyncio.to_thread(pipe.poll, 300) or pipe.recv() != "connected":
                raise RuntimeError("a watcher process did not connect")
        connect_seconds = time.perf_counter() - started
        cpu_connected = sum(cpu_seconds(pid) for pid in pids)
        stop_health.set()
        health_ms: list[float] = await asyncio.to_thread(health_in.recv)
        health.join()
        # The CPU the HTTP node(s) spend from here on: the watched job's events to every watcher (the
        # job itself runs in the serve node too; the fleet's worker is not counted).
        cpu_before_run = sum(cpu_seconds(pid) for pid in pids)
        await client.delete(f"{urls[-1]}/v1/jobs/{blocker}")
        results = [item for pipe in pipes for item in await asyncio.to_thread(pipe.recv)]
        cpu_after_run = sum(cpu_seconds(pid) for pid in pids)
        for proc in workers:
            proc.join()
        final = (await client.get(f"{first}/v1/jobs/{job_id}")).json()
    lists = [r for r in results if isinstance(r, list)]
    complete = [e for events in lists for e in events if e[1] == "complete"]
    delays = [(received - at) * 1000 for _, _, at, received in complete if at > 0]
    return {
        "watchers": args.watchers,
        "nodes": len(urls),
        "job_status": final["status"],
        "connect_seconds": round(connect_seconds, 2),
        "complete_then_end": sum(1 for events in lists if [e[1] for e in events[-2:]] == ["complete", "end"]),
        "watcher_errors": len(results) - len(lists),
        "terminal_ms_p50": percentile(delays, 0.5),
        "terminal_ms_p99": percentile(delays, 0.99),
        "terminal_ms_max": max(delays, default=float("nan")),
        "health_samples": len(health_ms),
        "health_ms_p50": percentile(health_ms, 0.5),
        "health_ms_p99": percentile(health_ms, 0.99),
        "health_ms_max": max(health_ms, default=float("nan")),
        "server_cpu_s_connect": round(cpu_connected - cpu_start, 2),
        "server_cpu_s_run": round(cpu_after_run - cpu_before_run, 2),
        "load_average_1m": os.getloadavg()[0],
        "rss_mb_before": rss_before,
        "rss_mb_after": [rss_mb(pid) for pid in pids],
    }


def print_table(result: dict[str, Any]) -> None:
    print(f"\nfan-out: {result['watchers']} watchers of one job, {result['steps']} steps, "
          f"{result['cpus']} CPUs (goals: terminal p99 < {GOAL_TERMINAL_P99_MS:.0f} ms, "
          f"/health < {GOAL_HEALTH_MS:.0f} ms)")
    header = (f"{'setup':<22}{'got end':>9}{'connect s':>11}{'term p50':>10}{'term p99':>10}{'term max':>10}"
              f"{'health p50':>12}{'health p99':>12}{'health max':>12}{'cpu conn s':>12}{'cpu run s':>11}{'load':>6}")
    print(header)
    print("-" * len(header))
    for name, r in result["runs"].items():
        print(f"{name:<22}{r['complete_then_end']:>9}{r['connect_seconds']:>11.2f}{r['terminal_ms_p50']:>10.0f}"
              f"{r['terminal_ms_p99']:>10.0f}{r['terminal_ms_max']:>10.0f}{r['health_ms_p50']:>12.1f}"
              f"{r['health_ms_p99']:>12.1f}{r['health_ms_max']:>12.1f}{r['server_cpu_s_connect']:>12.2f}"
              f"{r['server_cpu_s_run']:>11.2f}{r['load_average_1m']:>6.1f}")
    print("(ms; 'got end' = watchers that received complete then end; cpu = the HTTP node(s)' CPU seconds while\n"
          " the watchers connect, and from the blocker's cancel to the last watcher's end; load = the machine's)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=4, help="steps of the watched job (previews every step)")
    parser.add_argument("--client-processes", dest="client_processes", type=int, default=4)
    parser.add_argument("--store", choices=("sqlite", "memory"), default="sqlite", help="the serve node's store")
    parser.add_argument("--only", choices=("serve", "fleet"), default=None)
    parser.add_argument("--profile", type=Path, default=None, help="run the HTTP nodes under cProfile, stats here")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "fanout.json")
    args = parser.parse_args(argv)
    result: dict[str, Any] = {"watchers": args.watchers, "steps": args.steps, "cpus": os.cpu_count(),
                              "python": platform.python_version(), "store": args.store, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="sdworker-fanout-") as tmp:
        workdir = Path(tmp)
        from sdworker.engine.demo_model import ensure_demo_model

        ensure_demo_model(workdir / "cache")
        procs = Procs(workdir)
        try:
            if args.only in (None, "serve"):
                url, pid = serve_node(procs, args)
                result["runs"][f"serve ({args.store})"] = asyncio.run(watch_one_job([url], [pid], args))
                procs.stop_all()
                procs.running.clear()
            if args.only in (None, "fleet"):
                with redis_server(procs) as redis_url:
                    urls, pids = fleet_nodes(procs, redis_url, args)
                    result["runs"]["fleet (2 api nodes)"] = asyncio.run(watch_one_job(urls, pids, args))
                    procs.stop_all()
        except BaseException:
            for log in sorted(workdir.glob("*.log")):
                print(f"--- {log.name}\n{log.read_text(errors='replace')[-2000:]}", file=sys.stderr)
            raise
        finally:
            procs.stop_all()
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""What the HTTP service costs, and how it fans out.

1. **HTTP vs direct**: one job through the service (real uvicorn subprocess, previews off) against a
   direct ``DiffusersEngine.generate`` call in this process, on the same model, size, steps and seed.
   Interleaved rounds (direct, http, http, direct, ...) after untimed warm-ups; the HTTP time is
   POST to the ``complete`` event received (queueing, the step hook, PNG encoding and transfer
   included). Target: ratio of medians <= 1.02.
2. **1,000 watchers**: raw asyncio SSE clients on one job (held in the queue behind a blocker until
   all are subscribed): every watcher must get ``complete`` and ``end``; delay from publish (the
   event's ``at`` stamp, set by the bus) to receipt, p50/p99, for ``complete`` and for the ``end`` that
   follows it (goal: p99 under 250 ms); ``/health`` latency sampled on its own connection every 20 ms
   while the 1,000 connect (goal: under 100 ms: health must not wait behind stream set-up); the
   server's RSS before, at peak and after.
3. **The floor** (``bench/floor.py``): the same clients read a ``complete`` frame of the same size,
   and ``end``, from a bare server that only writes them; the ratio of the two p99s is what sdworker
   adds to the bytes' own cost in this run, whatever else loads the machine.

    .venv/bin/python bench/service.py                       # demo model, 256 px (about 2 min)
    .venv/bin/python bench/service.py --arch sd15 --size 256 --steps 20 --rounds 3
    .venv/bin/python bench/service.py --watchers 50 --rounds 1    # smoke test

On CPU both processes use one torch thread unless ``--threads`` says otherwise (see ``main``).

Prints a table and writes JSON (``--json``, default bench/results/service.json).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench.archs` and `sdworker` importable
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402

from bench.floor import floor_fan_out  # noqa: E402
from bench.harness import free_port, load_average, raise_fd_limit, write_json  # noqa: E402
from bench.watchers import fan_out, fan_out_rows  # noqa: E402
from sdworker.domain.request import GenerationRequest  # noqa: E402
from sdworker.settings import Settings  # noqa: E402

PROMPT = "a photograph of an astronaut riding a horse"
TARGET_RATIO = 1.02


# --- model and server ---------------------------------------------------------------------------


def prepare_model(arch: str, workdir: Path, seed: int) -> Path:
    """A diffusers folder both the server and the direct engine load."""
    if arch == "demo":
        from sdworker.engine.demo_model import ensure_demo_model

        return ensure_demo_model(workdir / "cache")
    folder = workdir / arch
    # Built in a child process, so that this process, like the server, only loads the folder and
    # does not carry the builder's 4 GB of fp32 weights through the runs.
    build = (
        "import sys; from bench import archs; "
        "archs.build_sd15_pipeline(seed=int(sys.argv[2])).save_pretrained(sys.argv[1], safe_serialization=True)"
    )
    subprocess.run([sys.executable, "-c", build, str(folder), str(seed)], cwd=ROOT, check=True)
    return folder


def start_server(model: Path, port: int, args: argparse.Namespace, log_path: Path) -> subprocess.Popen[bytes]:
    command = [
        sys.executable,
        "-m",
        "sdworker",
        "serve",
        "--model",
        str(model),
        "--port",
        str(port),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--max-queue",
        "8",
        "--log-level",
        "warning",
        "--store",
        args.store,
        # A folder of its own: one serve per data folder (a lock), so two runs at once do not collide.
        "--data-dir",
        str(log_path.parent / "data"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SDWORKER_CACHE_DIR": str(log_path.parent / "cache")}
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)  # torch's intra-op threads in the server, as in this process
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the server
    return subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}")
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError("the server did not get ready")


# --- part 1: HTTP vs direct ---------------------------------------------------------------------


def job_body(args: argparse.Namespace, steps: int | None = None, preview_every: int = 0) -> dict[str, Any]:
    return {
        "prompt": PROMPT,
        "width": args.size,
        "height": args.size,
        "steps": steps or args.steps,
        "seed": args.seed,
        "scheduler": args.scheduler,
        "preview": {"every": preview_every},
    }


async def http_job_seconds(client: httpx.AsyncClient, args: argparse.Namespace) -> float:
    started = time.perf_counter()
    job_id = (await client.post("/v1/jobs", json=job_body(args))).json()["job_id"]
    async with client.stream("GET", f"/v1/jobs/{job_id}/stream") as response:
        async for line in response.aiter_lines():
            if line.startswith("event: complete"):
                return time.perf_counter() - started
            if line.startswith("event: error"):
                raise RuntimeError("the job failed")
    raise RuntimeError("the stream ended without a terminal event")


async def compare_http_and_direct(url: str, model: Path, args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from sdworker.engine.diffusers_engine import DiffusersEngine

    if args.threads:
        torch.set_num_threads(args.threads)
    engine = DiffusersEngine(Settings(model=str(model), device=args.device, dtype=args.dtype))
    engine.load()
    request = GenerationRequest(
        prompt=PROMPT,
        num_inference_steps=args.steps,
        width=args.size,
        height=args.size,
        seed=args.seed,
        scheduler=args.scheduler,
    )
    times: dict[str, list[float]] = {"direct": [], "http": []}
    async with httpx.AsyncClient(base_url=url, timeout=3600) as client:

        async def run(kind: str) -> float:
            if kind == "http":
                return await http_job_seconds(client, args)
            started = time.perf_counter()
            await asyncio.to_thread(engine.generate, request)
            return time.perf_counter() - started

        for _ in range(args.warmups):  # untimed: first runs at a new shape are much slower on CPU
            await run("direct")
            await run("http")
        steps_before = await step_seconds(client)
        for round_index in range(args.rounds):
            order = ("direct", "http") if round_index % 2 == 0 else ("http", "direct")
            for kind in order:
                times[kind].append(await run(kind))
        steps_after = await step_seconds(client)
    engine.close()
    direct, http = statistics.median(times["direct"]), statistics.median(times["http"])
    step_count = steps_after[1] - steps_before[1]
    return {
        "direct_seconds": times["direct"],
        "http_seconds": times["http"],
        "direct_median": direct,
        "http_median": http,
        "ratio": http / direct,
        "target": TARGET_RATIO,
        # Less noisy than whole jobs: the server's own seconds per step (its /metrics histogram, the
        # gap between step callbacks) against the direct call's median over its steps.
        "server_step_seconds_mean": (steps_after[0] - steps_before[0]) / step_count if step_count else None,
        "direct_step_seconds": direct / args.steps,
    }


async def step_seconds(client: httpx.AsyncClient) -> tuple[float, float]:
    """(sum, count) of the server's ``sdworker_step_seconds`` histogram."""
    values = {"sum": 0.0, "count": 0.0}
    for line in (await client.get("/metrics")).text.splitlines():
        for key in values:
            if line.startswith(f"sdworker_step_seconds_{key} "):
                values[key] = float(line.split()[-1])
    return values["sum"], values["count"]


# --- part 2: many watchers ----------------------------------------------------------------------


async def many_watchers(url: str, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    """``bench/watchers.py: fan_out`` on this one node; the watched job waits behind a blocker."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        # The blocker holds the queue while the watchers connect (cancelled then, within one step).
        blocker_body = {**job_body(args, steps=150), "width": max(args.size, 256), "height": max(args.size, 256)}
        blocker = (await client.post("/v1/jobs", json=blocker_body)).json()["job_id"]
        job_id = (await client.post("/v1/jobs", json=job_body(args, steps=args.watch_steps, preview_every=1))).json()[
            "job_id"
        ]

        async def release() -> None:
            await client.delete(f"/v1/jobs/{blocker}")

        result = await fan_out([url], [pid], job_id, args.watchers, release, client_processes=args.client_processes)
        result["job_status"] = (await client.get(f"/v1/jobs/{job_id}")).json()["status"]
        png = await client.get(f"/v1/jobs/{job_id}/image")
        result["image_base64_chars"] = 4 * -(-len(png.content) // 3) if png.status_code == 200 else 0
    return result


async def the_floor(watched: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """The same fan-out from ``bench/floor.py``'s bare server, with the watched job's image size."""
    floor = await floor_fan_out(args.watchers, watched["image_base64_chars"], client_processes=args.client_processes)
    return {key: floor[key] for key in ("complete_then_end", "watcher_errors", "terminal_ms_p50", "terminal_ms_p99",
                                        "terminal_ms_max", "server_cpu_s_run", "load_average_start")}


# --- main ---------------------------------------------------------------------------------------


def print_table(result: dict[str, Any]) -> None:
    a, w, c = result.get("http_vs_direct"), result.get("watchers"), result["config"]
    print(
        f"\nsdworker service bench - arch {c['arch']}, {c['size']} px, {c['steps']} steps, {c['device']}/{c['dtype']}"
    )
    if a:
        print("\n| run | median s | all runs (s) |\n|---|---|---|")
        print(
            f"| direct engine call | {a['direct_median']:.3f} | {', '.join(f'{t:.3f}' for t in a['direct_seconds'])} |"
        )
        print(
            f"| HTTP job, previews off | {a['http_median']:.3f} | {', '.join(f'{t:.3f}' for t in a['http_seconds'])} |"
        )
        if a["server_step_seconds_mean"]:
            server_step, direct_step = a["server_step_seconds_mean"], a["direct_step_seconds"]
            print(
                f"| seconds per step: server (/metrics) vs direct | {server_step:.4f} vs {direct_step:.4f} "
                f"| ratio {server_step / direct_step:.3f} |"
            )
        verdict = "meets" if a["ratio"] <= a["target"] else "misses"
        print(f"| ratio HTTP / direct | {a['ratio']:.3f} | {verdict} the target <= {a['target']} |")
    if w and "error" in w:
        print(f"\n{c['watchers']} SSE watchers: ERROR {w['error']}")
    elif w:
        print(f"\n| {w['watchers']} SSE watchers, one job ({c['watch_steps']} steps, previews every step) | value |")
        print("|---|---|")
        for name, value in fan_out_rows(w):
            print(f"| {name} | {value} |")
        floor = result.get("floor")
        if floor and "error" in floor:
            print(f"| the floor (bare server, same bytes and clients) | ERROR {floor['error']} |")
        elif floor:
            print(
                f"| the floor (bare server, same bytes and clients): complete | {floor['complete_then_end']} got it; "
                f"p50 {floor['terminal_ms_p50']:.0f} ms, p99 {floor['terminal_ms_p99']:.0f} ms, "
                f"max {floor['terminal_ms_max']:.0f} ms; server CPU {floor['server_cpu_s_run']:.2f} s |"
            )
            print(f"| sdworker p99 / floor p99 (same run) | {w['terminal_ms_p99'] / floor['terminal_ms_p99']:.2f}x |")
    print(f"\nload average: {result['load_average_start']} at start, {result['load_average_end']} at end")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--arch", choices=("demo", "sd15"), default="demo")
    parser.add_argument("--size", type=int, default=None, help="px (default 256)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--scheduler", default="euler")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmups", type=int, default=2)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads in both processes (default 1 on CPU, 0 = torch's default)",
    )
    parser.add_argument("--watchers", type=int, default=1000)
    parser.add_argument("--watch-steps", dest="watch_steps", type=int, default=10)
    parser.add_argument("--client-processes", dest="client_processes", type=int, default=4,
                        help="processes the watchers' clients run in")
    parser.add_argument("--store", choices=("sqlite", "memory"), default="sqlite", help="the server's job store")
    parser.add_argument("--skip", choices=("compare", "watchers", "floor"), action="append", default=[])
    parser.add_argument("--json", default=str(ROOT / "bench" / "results" / "service.json"))
    args = parser.parse_args(argv)
    args.size = args.size or 256
    if args.threads is None:
        # One torch thread per process on CPU: with other work on the machine, OpenMP teams stall at
        # every barrier and single runs vary tenfold (seen here: 0.3 s jobs taking 5-50 s), which
        # swamps a 2 % target. Both sides get the same count, so the ratio stays fair.
        args.threads = 1 if args.device == "cpu" else 0
    raise_fd_limit(args.watchers)

    result: dict[str, Any] = {
        "config": {k: v for k, v in vars(args).items() if k not in ("json", "skip")},
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average_start": load_average(),
    }
    print(f"load average at start: {result['load_average_start']}", flush=True)
    with tempfile.TemporaryDirectory(prefix="sdworker-bench-") as tmp:
        workdir = Path(tmp)
        model = prepare_model(args.arch, workdir, args.seed)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = start_server(model, port, args, workdir / "server.log")
        try:
            wait_ready(url, server)
            if "compare" not in args.skip:
                result["http_vs_direct"] = asyncio.run(compare_http_and_direct(url, model, args))
            if "watchers" not in args.skip:
                try:
                    result["watchers"] = asyncio.run(many_watchers(url, server.pid, args))
                except Exception as exc:  # an error row, and the comparison above is still printed
                    result["watchers"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
        watched = result.get("watchers", {})
        if "floor" not in args.skip and watched.get("image_base64_chars"):
            try:  # after the server has exited: the bare server has the machine as sdworker had it
                result["floor"] = asyncio.run(the_floor(watched, args))
            except Exception as exc:
                result["floor"] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    result["load_average_end"] = load_average()
    print_table(result)
    write_json(Path(args.json), result)
    return 1 if "error" in result.get("watchers", {}) or "error" in result.get("floor", {}) else 0


if __name__ == "__main__":
    raise SystemExit(main())

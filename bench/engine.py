"""Engine speed: (1) what the engine adds over raw diffusers, (2) jobs per second, eager vs compiled
(``--compile``), one job at a time and in cross-job batches of 2, 4, 8.

    .venv/bin/python bench/engine.py --arch demo                                  # CPU, seconds
    .venv/bin/python bench/engine.py --arch sd15 --size 256 --steps 4 --rounds 3 --compile
    .venv/bin/python bench/engine.py --arch sd15 --size 512 --device cuda --dtype float16 --compile --batches 1 2 4 8
    .venv/bin/python bench/engine.py --arch sdxl --size 1024 --device cuda --dtype float16 --compile --batches 1 2 4
    .venv/bin/python bench/engine.py --arch flux1 --tiny                          # CPU: the tiny demo transformer
    .venv/bin/python bench/engine.py --arch flux1 --device cuda --dtype bfloat16 --steps 28 --batches 1 2

Flow families (``--arch flux1|sd3|zimage|qwenimage|flux2``): at their real architecture sizes with random
weights (``bench/flow_archs.py``: FLUX.1 dev, SD 3.5 large, Z-Image-Turbo, Qwen-Image, FLUX.2 klein),
built directly on the device in its dtype (no CPU copy); ``--tiny``: the demo bundle's tiny models,
for the CPU. Jobs use the family's default guidance (its CFG rows, or none), in both columns.

(1) ``direct`` calls the diffusers pipeline, ``engine`` calls ``DiffusersEngine.generate`` with a
no-op step hook (the runner always passes one), interleaved (direct, engine, engine, direct, ...) in
one process, same model, seed and steps. Target: engine / direct <= 1.02.

(2) For each mode (``eager``; ``compiled`` with ``--compile``: a second engine over a second copy of
the same weights, compiled for the one size) and each batch size N: N jobs with different seeds and
prompts, through ``generate`` (N = 1, what the runner does for a lone job) or ``generate_batch``.
Reported per batch: jobs/s, seconds per job, seconds per denoising step (the batch's), it/s, and the
ratio of jobs/s to raw diffusers' (one job at a time). Everything is interleaved round by round.
Target (issue #12): >= 1.25x raw diffusers' jobs/s. Prints tables; writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

DEFAULT_SIZE = {"demo": 64, "sd15": 256, "sdxl": 1024}
FLOW = ("flux1", "sd3", "zimage", "qwenimage", "flux2")
PROMPTS = ("a photo of an astronaut riding a horse", "a watercolour of a lighthouse at dusk",
           "a bowl of ramen, studio lighting", "a red fox in fresh snow")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--arch", choices=("demo", "sd15", "sdxl", *FLOW), default="demo")
    parser.add_argument("--tiny", action="store_true", help="flow families: the tiny demo model (CPU)")
    parser.add_argument("--size", type=int, default=None,
                        help="image side in px (demo 64, sd15 256, sdxl 1024, flow: native, --tiny 64)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4], help="jobs per batch to time")
    parser.add_argument("--compile", action="store_true", help="also time a compiled engine (slow to start)")
    parser.add_argument("--cache-dir", default=None, help="compile cache folder (default: a temporary one)")
    parser.add_argument("--json", default="bench/results/engine.json")
    args = parser.parse_args(argv)

    import torch

    from bench.archs import ARCHS
    from bench.flow_archs import FLOW_ARCHS
    from bench.gpu import on_device
    from sdworker.engine.diffusers_engine import DiffusersEngine
    from sdworker.engine.models import resolve_device
    from sdworker.settings import Settings

    if args.threads:
        torch.set_num_threads(args.threads)
    family = args.family = FLOW_ARCHS[args.arch][0] if args.arch in FLOW_ARCHS else None
    if family is not None:
        size = args.size or (64 if args.tiny else FLOW_ARCHS[args.arch][3])
    else:
        size = args.size or DEFAULT_SIZE[args.arch]
    cache_dir = Path(args.cache_dir) if args.cache_dir else Path(tempfile_dir())
    base = {"model": args.arch, "device": args.device, "dtype": args.dtype, "cache_dir": cache_dir,
            "max_batch": max(args.batches)}
    settings = Settings(**base)
    device, dtype = resolve_device(settings)

    def build() -> Any:
        if family is not None and not args.tiny:  # tens of GB: allocated on the device in its dtype
            with on_device(device, dtype):
                pipe = FLOW_ARCHS[args.arch][1]()
        else:
            pipe = FLOW_ARCHS[args.arch][2]() if family is not None else ARCHS[args.arch]()
            if device.type != "cpu" or dtype != torch.float32:  # built as fp32 on the CPU
                pipe.to(device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    started = time.perf_counter()
    pipe = build()
    build_seconds = time.perf_counter() - started
    engines = {"eager": DiffusersEngine.from_pipeline(pipe, settings, model_name=args.arch, family=family)}
    compile_seconds = None
    if args.compile:
        started = time.perf_counter()
        compiled = Settings(**base, compile=True, compile_sizes=(f"{size}x{size}",))
        engines["compiled"] = DiffusersEngine.from_pipeline(build(), compiled, model_name=args.arch, family=family)
        compile_seconds = time.perf_counter() - started  # the build, the compile and its warm-up

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    timer = Timer(sync)
    result: dict[str, Any] = {
        "arch": args.arch, "size": size, "steps": args.steps, "rounds": args.rounds,
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "build_seconds": round(build_seconds, 2), "compile_seconds": compile_seconds,
    }
    result |= overhead(args, pipe, engines["eager"], size, timer)
    result["throughput"] = throughput(args, pipe, engines, size, timer)
    if "compiled" in engines:  # proof that the compiled graph ran (and how often the eager fallback did)
        network = engines["compiled"].model.text_to_image
        forward = (network.unet if family is None else network.transformer).forward
        result["compiled_unet_calls"] = getattr(forward, "compiled_calls", None)
        result["eager_unet_calls"] = getattr(forward, "eager_calls", None)
        result["warm_seconds"] = getattr(forward, "warm_seconds", None)
    print_tables(result)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def tempfile_dir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="sdworker-bench-")


class Timer:
    """Wall seconds of a call, with the device synchronised on both sides."""

    def __init__(self, sync: Callable[[], None]) -> None:
        self.sync = sync

    def __call__(self, run: Callable[[], Any]) -> float:
        self.sync()
        started = time.perf_counter()
        run()
        self.sync()
        return time.perf_counter() - started


def direct_call(args: argparse.Namespace, pipe: Any, size: int, prompt: str, seed: int,
                engine: Any = None) -> Callable[[], Any]:
    """Raw diffusers: the pipeline called as a user would. A flow family gets the very arguments the
    engine passes (its guidance argument, Qwen-Image's " " negative), from the family's adapter."""
    import torch

    if args.family is None:
        return lambda: pipe(prompt, num_inference_steps=args.steps, width=size, height=size,
                            generator=torch.Generator("cpu").manual_seed(seed))
    from sdworker.engine.families import flow_adapter

    adapter = flow_adapter(args.family)
    assert adapter is not None and engine is not None
    request = flow_request(args, prompt, size, seed)

    def run() -> Any:
        generators = [torch.Generator("cpu").manual_seed(seed)]
        called, kwargs = adapter.call_arguments(engine.model, request, prompt, generators)
        return called(**kwargs)

    return run


def flow_request(args: argparse.Namespace, prompt: str, size: int, seed: int) -> Any:
    """A job on a flow family, with the family's default guidance (its CFG rows or none)."""
    from sdworker.domain.families import family_facts
    from sdworker.domain.request import GenerationRequest

    guidance = family_facts(args.family).defaults_for("").guidance
    return GenerationRequest(prompt, num_inference_steps=args.steps, width=size, height=size, seed=seed,
                             guidance_scale=guidance)


def overhead(args: argparse.Namespace, pipe: Any, engine: Any, size: int, timer: Timer) -> dict[str, Any]:
    """Seconds per loop step of the same job: raw diffusers vs ``engine.generate``."""
    from sdworker.domain.request import GenerationRequest
    from sdworker.engine.protocol import StepView

    def no_op(view: StepView) -> None:
        return None

    prompt, seed = PROMPTS[0], 1234
    request = GenerationRequest(prompt, num_inference_steps=args.steps, width=size, height=size, seed=seed)
    if args.family is not None:
        request = flow_request(args, prompt, size, seed)
    runs = {"direct": direct_call(args, pipe, size, prompt, seed, engine),
            "engine": lambda: engine.generate(request, on_step=no_op)}
    timer(runs["direct"]), timer(runs["engine"])  # warm-up: allocator, kernels, caches
    loop_steps = int(getattr(pipe, "_num_timesteps", args.steps))  # PNDM runs one more than asked
    times: dict[str, list[float]] = {"direct": [], "engine": []}
    for round_index in range(args.rounds):
        # A B, then B A: whichever runs second in a pair meets the allocator and caches the first left.
        order = ("direct", "engine") if round_index % 2 == 0 else ("engine", "direct")
        for name in order:
            times[name].append(timer(runs[name]) / loop_steps)
    direct_s, engine_s = statistics.median(times["direct"]), statistics.median(times["engine"])
    return {
        "loop_steps": loop_steps,
        "direct_s_per_step": times["direct"], "engine_s_per_step": times["engine"],
        "direct_median_s_per_step": direct_s, "engine_median_s_per_step": engine_s,
        "overhead_ratio": engine_s / direct_s,
        "overhead_ratio_of_minima": min(times["engine"]) / min(times["direct"]),
        "engine_python_us_per_step": added_python_per_step_us(),
        "note": "seconds per denoising-loop iteration, whole call (text encoder + loop + VAE decode) / loop steps",
    }


def throughput(
    args: argparse.Namespace, pipe: Any, engines: dict[str, Any], size: int, timer: Timer
) -> list[dict[str, Any]]:
    """Jobs per second per (mode, batch size), against raw diffusers one job at a time."""
    from sdworker.domain.request import GenerationRequest
    from sdworker.engine.protocol import BatchItem, StepView

    def no_op(view: StepView) -> None:
        return None

    def requests(count: int) -> list[GenerationRequest]:
        if args.family is not None:
            return [flow_request(args, PROMPTS[i % len(PROMPTS)], size, 1000 + i) for i in range(count)]
        return [GenerationRequest(PROMPTS[i % len(PROMPTS)], num_inference_steps=args.steps, width=size,
                                  height=size, seed=1000 + i, guidance_scale=6.0 + i % 3) for i in range(count)]

    def job_runner(engine: Any, count: int) -> Callable[[], Any]:
        batch = requests(count)
        if count == 1:
            return lambda: engine.generate(batch[0], on_step=no_op)

        def run() -> None:
            outcomes = engine.generate_batch([BatchItem(r, on_step=no_op) for r in batch])
            failed = [o for o in outcomes if isinstance(o, BaseException)]
            if failed:
                raise RuntimeError(f"a batch job failed: {failed[0]!r}")

        return run

    runs: dict[tuple[str, int], Callable[[], Any]] = {
        ("direct", 1): direct_call(args, pipe, size, PROMPTS[0], 1000, engines["eager"])}
    for mode, engine in engines.items():
        for count in args.batches:
            runs[(mode, count)] = job_runner(engine, count)
    for run in runs.values():
        timer(run)  # warm-up: each shape once (a compiled engine warmed its own at load)
    times: dict[tuple[str, int], list[float]] = {key: [] for key in runs}
    keys = list(runs)
    for round_index in range(args.rounds):
        shift = round_index % len(keys)
        for key in keys[shift:] + keys[:shift]:  # rotate the order each round
            times[key].append(timer(runs[key]))
    direct_jobs_per_s = 1.0 / statistics.median(times[("direct", 1)])
    loop_steps = int(getattr(pipe, "_num_timesteps", args.steps))
    rows = []
    for (mode, count), seconds in times.items():
        median = statistics.median(seconds)
        rows.append({
            "mode": mode, "batch": count, "seconds": seconds, "median_s_per_batch": median,
            "jobs_per_s": count / median, "s_per_job": median / count, "s_per_step": median / loop_steps,
            "it_per_s": loop_steps / median, "images_per_s": count / median,
            "vs_direct": (count / median) / direct_jobs_per_s,
        })
    return rows


def print_tables(result: dict[str, Any]) -> None:
    if result.get("compile_seconds") is not None:
        print(f"compiled engine: {result['compile_seconds']:.1f} s to build, compile and warm; UNet calls "
              f"compiled {result.get('compiled_unet_calls')}, eager {result.get('eager_unet_calls')}")
    print(f"{'arch':9} {'size':>5} {'steps':>5} {'device':8} {'direct s/step':>14} {'engine s/step':>14} "
          f"{'ratio':>7} {'ratio(min)':>10} {'hook us/step':>12}")
    print(f"{result['arch']:9} {result['size']:5d} {result['loop_steps']:5d} {result['device']:8} "
          f"{result['direct_median_s_per_step']:14.4f} {result['engine_median_s_per_step']:14.4f} "
          f"{result['overhead_ratio']:7.3f} {result['overhead_ratio_of_minima']:10.3f} "
          f"{result['engine_python_us_per_step']:12.1f}")
    print()
    print(f"{'mode':9} {'batch':>5} {'jobs/s':>9} {'s/job':>9} {'s/step':>9} {'it/s':>8} {'vs direct':>9}")
    for row in result["throughput"]:
        print(f"{row['mode']:9} {row['batch']:5d} {row['jobs_per_s']:9.3f} {row['s_per_job']:9.3f} "
              f"{row['s_per_step']:9.4f} {row['it_per_s']:8.2f} {row['vs_direct']:8.2f}x")


def added_python_per_step_us(iterations: int = 20000) -> float:
    """What the engine adds to each step on the Python side, measured alone (immune to machine noise):
    the recording ``scheduler.step`` wrapper plus the step callback with a no-op hook."""
    import torch

    from sdworker.domain.control import CancelToken
    from sdworker.engine.step_hook import StepCallback
    from sdworker.engine.x0 import X0Recorder

    class Scheduler:
        config: dict[str, Any] = {}  # noqa: RUF012
        timesteps = range(iterations)
        step_index = 1

        def step(self, model_output: Any, timestep: Any, sample: Any, return_dict: bool = False) -> Any:
            return (sample,)

    class Pipe:
        _num_timesteps = iterations
        scheduler = Scheduler()

    tensor = torch.zeros(1)
    plain, pipe = Scheduler(), Pipe()
    recorder = X0Recorder(pipe.scheduler)
    callback = StepCallback(lambda view: None, CancelToken(), recorder, lambda *a: None)
    tensors = {"latents": tensor}
    t0 = time.perf_counter()
    for i in range(iterations):
        plain.step(tensor, i, tensor)
    t1 = time.perf_counter()
    for i in range(iterations):
        pipe.scheduler.step(tensor, i, tensor)
        callback(pipe, i, i, tensors)
    t2 = time.perf_counter()
    return ((t2 - t1) - (t1 - t0)) / iterations * 1e6


if __name__ == "__main__":
    raise SystemExit(main())

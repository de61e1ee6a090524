"""Seconds per denoising step: DiffusersEngine.generate against a direct call of the same diffusers
pipeline, interleaved (direct, engine, direct, engine, ...) in one process, same model, seed and steps.

    .venv/bin/python bench/engine.py --arch demo                     # seconds, CPU
    .venv/bin/python bench/engine.py --arch sd15 --size 256 --steps 4 --rounds 3

The engine runs with a no-op step hook, as the job runner always passes one, and no previews: what
it adds over diffusers is a fresh scheduler per job, the recording ``scheduler.step`` wrapper and the
step callback. Target: engine / direct <= 1.02. Prints a table; writes JSON (--json).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

DEFAULT_SIZE = {"demo": 64, "sd15": 256}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--arch", choices=("demo", "sd15"), default="demo")
    parser.add_argument("--size", type=int, default=None, help="image side in px (demo 64, sd15 256)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--json", default="bench/results/engine.json")
    args = parser.parse_args(argv)

    import torch

    from bench.archs import ARCHS
    from sdworker.engine.diffusers_engine import DiffusersEngine
    from sdworker.engine.models import resolve_device
    from sdworker.engine.protocol import GenerationRequest, StepView
    from sdworker.settings import Settings

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(model=args.arch, device=args.device, dtype=args.dtype)
    device, dtype = resolve_device(settings)
    size = args.size or DEFAULT_SIZE[args.arch]
    started = time.perf_counter()
    pipe = ARCHS[args.arch]()
    if device.type != "cpu" or dtype != torch.float32:  # built as fp32 on the CPU
        pipe.to(device=device, dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    build_seconds = time.perf_counter() - started
    engine = DiffusersEngine.from_pipeline(pipe, settings, model_name=args.arch)
    prompt, seed = "a photo of an astronaut riding a horse", 1234

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def direct() -> float:
        sync()
        t = time.perf_counter()
        pipe(prompt, num_inference_steps=args.steps, width=size, height=size,
             generator=torch.Generator("cpu").manual_seed(seed))
        sync()
        return time.perf_counter() - t

    def no_op(view: StepView) -> None:
        return None

    request = GenerationRequest(prompt, num_inference_steps=args.steps, width=size, height=size, seed=seed)

    def through_engine() -> float:
        sync()
        t = time.perf_counter()
        engine.generate(request, on_step=no_op)
        sync()
        return time.perf_counter() - t

    direct(), through_engine()  # warm-up: allocator, kernels, caches
    loop_steps = int(getattr(pipe, "_num_timesteps", args.steps))  # PNDM runs one more than asked
    times: dict[str, list[float]] = {"direct": [], "engine": []}
    runs = {"direct": direct, "engine": through_engine}
    for round_index in range(args.rounds):
        # A B, then B A: whichever runs second in a pair meets the allocator and caches the first left.
        order = ("direct", "engine") if round_index % 2 == 0 else ("engine", "direct")
        for name in order:
            times[name].append(runs[name]() / loop_steps)
    direct_s, engine_s = statistics.median(times["direct"]), statistics.median(times["engine"])
    direct_min, engine_min = min(times["direct"]), min(times["engine"])
    hook_us = added_python_per_step_us()
    result: dict[str, Any] = {
        "arch": args.arch, "size": size, "steps": args.steps, "loop_steps": loop_steps, "rounds": args.rounds,
        "device": str(device), "dtype": str(dtype).removeprefix("torch."), "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "build_seconds": round(build_seconds, 2),
        "direct_s_per_step": times["direct"], "engine_s_per_step": times["engine"],
        "direct_median_s_per_step": direct_s, "engine_median_s_per_step": engine_s,
        "overhead_ratio": engine_s / direct_s,
        "overhead_ratio_of_minima": engine_min / direct_min,
        "engine_python_us_per_step": hook_us,
        "note": "seconds per denoising-loop iteration, whole call (text encoder + loop + VAE decode) / loop steps",
    }
    print(f"{'arch':6} {'size':>5} {'steps':>5} {'device':8} {'direct s/step':>14} {'engine s/step':>14} "
          f"{'ratio':>7} {'ratio(min)':>10} {'hook us/step':>12}")
    print(f"{args.arch:6} {size:5d} {loop_steps:5d} {result['device']:8} {direct_s:14.4f} {engine_s:14.4f} "
          f"{result['overhead_ratio']:7.3f} {result['overhead_ratio_of_minima']:10.3f} {hook_us:12.1f}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def added_python_per_step_us(iterations: int = 20000) -> float:
    """What the engine adds to each step on the Python side, measured alone (immune to machine noise):
    the recording ``scheduler.step`` wrapper plus the step callback with a no-op hook."""
    import torch

    from sdworker.engine.protocol import CancelToken
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

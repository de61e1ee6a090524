"""The GPU table of #22 in one run: SD 1.5 at 512 px (fp16: eager, compiled, batch 4), SDXL at 1024 px,
FLUX.1 dev at 1024 px 28 steps (bf16 and fp8), Z-Image-Turbo at 1024 px 8 steps. Each row: raw
diffusers and the engine on the same pipeline in the same process (it/s and images/s of both), peak
memory, compile seconds (compiled rows), TAESD preview ms. Real-size architectures with random weights
initialised on the device (``bench/archs.py``, ``bench/flow_archs.py``): nothing is downloaded.

    bench/gpu.sh                                  # the whole table on one GPU (under 5 minutes on an H200)
    bench/gpu.sh --only flux-dev-fp8              # rerun one row (the others stay in the JSON)
    .venv/bin/python bench/gpu.py --tiny          # the script itself on the CPU: demo-size models, 64 px

Writes ``--json`` and ``--markdown`` after every row, so a run cut short keeps what it measured. Timing:
one warm-up call, then one timed call per side (a generation is seconds long at these sizes; the
engine's overhead over diffusers is measured in ``bench/engine.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import platform
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing


@dataclass(frozen=True)
class Row:
    arch: str  # sd15 | sdxl | flux1 | zimage
    size: int
    steps: int
    dtype: str
    batch: int = 1
    compile: bool = False
    quantize: str = "none"


ROWS: dict[str, Row] = {
    "sd15-eager": Row("sd15", 512, 20, "float16"),
    "sd15-compiled": Row("sd15", 512, 20, "float16", compile=True),
    "sd15-batch4": Row("sd15", 512, 20, "float16", batch=4),
    "sdxl": Row("sdxl", 1024, 20, "float16"),
    "flux-dev-bf16": Row("flux1", 1024, 28, "bfloat16"),
    "flux-dev-fp8": Row("flux1", 1024, 28, "bfloat16", quantize="fp8"),
    "zimage-turbo": Row("zimage", 1024, 8, "bfloat16"),
}
FLOW = {"flux1", "zimage"}
LATENT_CHANNELS = {"sd15": 4, "sdxl": 4, "flux1": 16, "zimage": 16}
GUIDANCE = {"sd15": 7.5, "sdxl": 7.5, "flux1": 3.5, "zimage": 0.0}


def builders(tiny: bool) -> dict[str, Callable[[], Any]]:
    from bench import flow_archs
    from bench.archs import build_demo_pipeline, build_sd15_pipeline, build_sdxl_pipeline

    if tiny:
        return {"sd15": build_demo_pipeline, "sdxl": flow_archs.build_tiny_sdxl_pipeline,
                "flux1": flow_archs.build_tiny_flux1_pipeline, "zimage": flow_archs.build_tiny_zimage_pipeline}
    return {"sd15": build_sd15_pipeline, "sdxl": build_sdxl_pipeline, "flux1": flow_archs.build_flux1_dev_pipeline,
            "zimage": flow_archs.build_zimage_turbo_pipeline}


@contextlib.contextmanager
def on_device(device: Any, dtype: Any) -> Iterator[None]:
    """Modules built inside are allocated on ``device`` in ``dtype`` (no CPU copy, no cast)."""
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with device:
            yield
    finally:
        torch.set_default_dtype(before)


def measure(name: str, row: Row, args: argparse.Namespace, cache_dir: Path) -> dict[str, Any]:
    import torch

    from sdworker.domain.request import GenerationRequest
    from sdworker.engine.diffusers_engine import DiffusersEngine
    from sdworker.settings import Settings

    device = torch.device(args.device)
    dtype = getattr(torch, "float32" if args.tiny else row.dtype)
    size, steps = (64, 2) if args.tiny else (row.size, row.steps)
    out: dict[str, Any] = {"row": name, "size": size, "steps": steps, "batch": row.batch, "dtype": str(dtype)[6:]}
    if row.quantize == "fp8" and device.type != "cuda":
        return {**out, "skipped": "fp8 needs CUDA"}
    started = time.perf_counter()
    with on_device(device, dtype):
        pipe = builders(args.tiny)[row.arch]()
    pipe.set_progress_bar_config(disable=True)
    if row.quantize != "none":
        from torchao.quantization import quantize_

        from sdworker.engine.quantize import torchao_config

        quantize_(pipe.transformer, torchao_config(row.quantize))  # what --quantize fp8 loads
    out["build_s"] = round(time.perf_counter() - started, 1)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    call = {"prompt": "a photo of a lighthouse at dusk", "num_inference_steps": steps, "width": size,
            "height": size, "guidance_scale": GUIDANCE[row.arch], "num_images_per_prompt": row.batch}

    def timed(run: Callable[[], Any]) -> float:
        run()  # warm-up
        sync()
        began = time.perf_counter()
        run()
        sync()
        return time.perf_counter() - began

    raw = timed(lambda: pipe(**call, generator=torch.Generator("cpu").manual_seed(1)))
    settings = Settings(model=name, device=args.device, dtype=str(dtype)[6:], cache_dir=cache_dir,
                        max_batch=row.batch, compile=row.compile,
                        compile_sizes=(f"{size}x{size}",) if row.compile else ())
    started = time.perf_counter()
    engine = DiffusersEngine.from_pipeline(pipe, settings, model_name=name, family=row.arch if row.arch in FLOW
                                           else None)
    if row.compile:
        out["compile_s"] = round(time.perf_counter() - started, 1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    request = GenerationRequest(call["prompt"], num_inference_steps=steps, width=size, height=size, seed=1,
                                guidance_scale=GUIDANCE[row.arch], num_images=row.batch)
    ours = timed(lambda: engine.generate(request, on_step=lambda view: None))
    out.update({
        "diffusers_it_s": round(steps / raw, 3), "diffusers_images_s": round(row.batch / raw, 3),
        "engine_it_s": round(steps / ours, 3), "engine_images_s": round(row.batch / ours, 3),
        "engine_vs_diffusers": round(raw / ours, 3),
        "peak_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if device.type == "cuda"
        else round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "taesd_ms": taesd_ms(LATENT_CHANNELS[row.arch], size, device, dtype, sync),
    })
    return out  # the pipeline and the engine go with this frame (main collects before the next row)


def taesd_ms(channels: int, size: int, device: Any, dtype: Any, sync: Callable[[], None]) -> float:
    """One preview decode (TAESD's size, random weights) of a latent of the job's size, median of 5."""
    import torch
    from diffusers import AutoencoderTiny

    with on_device(device, dtype):
        taesd = AutoencoderTiny(latent_channels=channels).eval()
    latents = torch.randn(1, channels, size // 8, size // 8, device=device, dtype=dtype)
    times = []
    with torch.no_grad():
        for _ in range(6):
            sync()
            began = time.perf_counter()
            taesd.decode(latents)
            sync()
            times.append(time.perf_counter() - began)
    return round(sorted(times[1:])[2] * 1000, 2)


def markdown(results: dict[str, Any]) -> str:
    lines = [f"GPU table: {results['device_name']}, torch {results['torch']}{' (--tiny)' if results['tiny'] else ''}",
             "", "| row | size | steps | batch | dtype | diffusers it/s | engine it/s | diffusers img/s | engine img/s "
             "| engine/diffusers | peak GiB | compile s | TAESD ms |", "|" + "---|" * 13]
    for name in ROWS:
        r = results["rows"].get(name)
        if r is None:
            continue
        if "skipped" in r:
            lines.append(f"| {name} | {r['size']} | {r['steps']} | {r['batch']} | {r['dtype']} | skipped: "
                         f"{r['skipped']} |||||||")
            continue
        lines.append(f"| {name} | {r['size']} | {r['steps']} | {r['batch']} | {r['dtype']} | {r['diffusers_it_s']} | "
                     f"{r['engine_it_s']} | {r['diffusers_images_s']} | {r['engine_images_s']} | "
                     f"{r['engine_vs_diffusers']}x | {r['peak_gib']} | {r.get('compile_s', '')} | {r['taesd_ms']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--only", nargs="+", choices=tuple(ROWS), default=None, help="rows to (re)run")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="demo-size models at 64 px, 2 steps (test the script)")
    parser.add_argument("--json", default="bench/results/gpu.json")
    parser.add_argument("--markdown", default="bench/results/gpu.md")
    args = parser.parse_args(argv)

    import torch

    json_path, md_path = Path(args.json), Path(args.markdown)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    results: dict[str, Any] = {"rows": {}}
    if args.only and json_path.is_file():  # rerunning some rows: keep the others
        results = json.loads(json_path.read_text())
    results.update(tiny=args.tiny, torch=torch.__version__, machine=platform.processor() or platform.machine(),
                   device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU")
    with tempfile.TemporaryDirectory(prefix="sdw-gpu-bench-") as cache:
        for name in args.only or ROWS:
            began = time.perf_counter()
            results["rows"][name] = measure(name, ROWS[name], args, Path(cache))
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
            results["rows"][name]["row_s"] = round(time.perf_counter() - began, 1)
            json_path.write_text(json.dumps(results, indent=2) + "\n")
            md_path.write_text(markdown(results))
            print(f"{name}: {results['rows'][name]}", file=sys.stderr, flush=True)
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

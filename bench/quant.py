"""CPU benchmark of #22's transformer options on a mid-size random FLUX.1 (no download): weight memory
and seconds per step for unquantised / int8 (torchao) / GGUF Q8_0 weights, and the speed-up and PSNR
against eager of ``--compile`` (regional) and of each step cache.

    .venv/bin/python bench/quant.py                      # 256 px, 8 steps, 2 rounds
    .venv/bin/python bench/quant.py --size 128 --steps 6 --rounds 1 --only none int8

The pipeline is the demo FLUX.1's (its tiny CLIP, T5 and VAE) around a transformer of real block
structure and mid size (``MID_TRANSFORMER``: 2 double + 4 single blocks, width 512, ~60 M parameters),
so the transformer is where the time goes, as in the real model. Every row runs the same prompt and
seed; PSNR is each row's image against the unquantised eager one. Rows run interleaved round by round
and the best round counts, in wall and in CPU seconds (all threads). Prints a Markdown table; writes
JSON (--json) after each row.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing

MID_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1, "in_channels": 64, "num_layers": 2, "num_single_layers": 4, "attention_head_dim": 64,
    "num_attention_heads": 8, "joint_attention_dim": 32, "pooled_projection_dim": 32, "axes_dims_rope": (16, 24, 24),
    "guidance_embeds": True,
}
ROWS = ("none", "int8", "gguf", "compiled", "first_block", "first_block_0.25", "taylorseer", "mag")


def build(folder: Path, row: str, sizes: tuple[int, int]) -> tuple[Any, dict[str, Any]]:
    """The pipeline of ``row`` and what loading it cost (weight bytes, seconds, compile seconds)."""
    import diffusers
    import torch
    from torchao.quantization import Int8WeightOnlyConfig

    from sdworker.engine.block_compile import compile_blocks
    from sdworker.engine.quantize import weight_bytes

    started = time.perf_counter()
    if row == "int8":
        transformer = diffusers.FluxTransformer2DModel.from_pretrained(
            folder / "transformer", quantization_config=diffusers.TorchAoConfig(Int8WeightOnlyConfig()))
    elif row == "gguf":
        transformer = diffusers.FluxTransformer2DModel.from_single_file(
            str(folder / "transformer.gguf"), config=str(folder), subfolder="transformer",
            quantization_config=diffusers.GGUFQuantizationConfig(compute_dtype=torch.float32))
    else:
        transformer = diffusers.FluxTransformer2DModel.from_pretrained(folder / "transformer")
    pipe = diffusers.FluxPipeline.from_pretrained(folder, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    info: dict[str, Any] = {"weight_mb": weight_bytes(transformer) / 2**20, "load_s": time.perf_counter() - started}
    if row == "compiled":
        made = compile_blocks(transformer)
        assert made is not None
        _, state = made
        state.warming = True
        started = time.perf_counter()
        run(pipe, sizes, 2, None)
        state.warming = False
        info["compile_s"] = time.perf_counter() - started
    return pipe, info


def run(pipe: Any, size: tuple[int, int], steps: int, cache: Any) -> Any:
    import torch

    from sdworker.engine.step_cache import step_cache

    with step_cache(pipe.transformer, cache, steps):
        return pipe("a photo of a lighthouse at dusk", width=size[0], height=size[1], num_inference_steps=steps,
                    guidance_scale=3.5, generator=torch.Generator("cpu").manual_seed(1), output_type="np").images[0]


def psnr(a: Any, b: Any) -> float:
    import numpy as np

    mse = float(((np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)) ** 2).mean())
    return float("inf") if mse == 0 else float(10 * np.log10(1.0 / mse))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--only", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--json", default="bench/results/quant_cpu.json")
    args = parser.parse_args(argv)

    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from sdworker.domain.step_cache import StepCache
    from sdworker.engine.demo_flow import build_demo_flux1_components
    from sdworker.engine.gguf_file import write_gguf

    if args.threads:
        torch.set_num_threads(args.threads)
    size = (args.size, args.size)
    caches = {"first_block": StepCache("first_block", 0.08), "first_block_0.25": StepCache("first_block", 0.25),
              "taylorseer": StepCache("taylorseer"),
              "mag": StepCache("mag")}
    rows = ["none", *[r for r in args.only if r != "none"]]  # the reference always runs
    results: dict[str, Any] = {"machine": platform.processor() or platform.machine(),
                               "threads": torch.get_num_threads(), "size": args.size, "steps": args.steps,
                               "transformer": MID_TRANSFORMER, "rows": {}}
    with tempfile.TemporaryDirectory(prefix="sdw-quant-bench-") as temp:
        folder = Path(temp)
        components = build_demo_flux1_components(1234)
        torch.manual_seed(7)
        components["transformer"] = FluxTransformer2DModel(**MID_TRANSFORMER).eval()
        FluxPipeline(**components).save_pretrained(folder, safe_serialization=True)
        write_gguf(components["transformer"].state_dict(), folder / "transformer.gguf")
        del components
        pipes = {}
        for row in rows:
            pipe_row = row if row in ("int8", "gguf", "compiled") else "none"
            if pipe_row not in pipes:
                pipes[pipe_row] = build(folder, pipe_row, size)
        reference = None
        best: dict[str, float] = {}
        # CPU seconds (all threads) beside wall seconds: on a shared machine the wall clock measures the
        # neighbours' load, the CPU time much less so.
        best_cpu: dict[str, float] = {}
        images: dict[str, Any] = {}
        for _ in range(args.rounds):
            for row in rows:
                pipe, _ = pipes[row if row in ("int8", "gguf", "compiled") else "none"]
                started, cpu_started = time.perf_counter(), time.process_time()
                images[row] = run(pipe, size, args.steps, caches.get(row))
                best[row] = min(best.get(row, float("inf")), time.perf_counter() - started)
                best_cpu[row] = min(best_cpu.get(row, float("inf")), time.process_time() - cpu_started)
        reference = images["none"]
        for row in rows:
            _, info = pipes[row if row in ("int8", "gguf", "compiled") else "none"]
            results["rows"][row] = {
                "weight_mb": round(info["weight_mb"], 1), "s_per_step": round(best[row] / args.steps, 4),
                "cpu_s_per_step": round(best_cpu[row] / args.steps, 4),
                "speedup": round(best["none"] / best[row], 2),
                "cpu_speedup": round(best_cpu["none"] / best_cpu[row], 2),
                "psnr_db": round(psnr(images[row], reference), 1),
                **({"compile_s": round(info["compile_s"], 1)} if "compile_s" in info else {}),
            }
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(results, indent=2))
    results["load_average"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    Path(args.json).write_text(json.dumps(results, indent=2))
    print(f"\nCPU, {results['threads']} threads (load average {results['load_average']}), mid-size FLUX.1 "
          f"transformer, {args.size} px, {args.steps} steps, best of {args.rounds}\n")
    print("| row | transformer weights MB | s/step | CPU s/step | speed-up vs none (wall, CPU) | PSNR vs none dB "
          "| compile s |")
    print("|---|---|---|---|---|---|---|")
    for row, r in results["rows"].items():
        print(f"| {row} | {r['weight_mb']} | {r['s_per_step']} | {r['cpu_s_per_step']} | {r['speedup']}x, "
              f"{r['cpu_speedup']}x | {r['psnr_db']} | {r.get('compile_s', '')} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

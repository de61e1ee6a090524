"""What ControlNet units cost a job: the engine on the demo bundle, one job per row with 0, 1 and 2 units,
per family (``demo-sd15`` with ``demo-controlnet``, ``demo-flux1`` with ``demo-flux1-controlnet``), the
whole ``DiffusersEngine.generate`` as a job runs it (the ControlNet pipeline made over the model's
modules, the control maps, the denoising loop, the VAE).

    .venv/bin/python bench/controlnet.py
    .venv/bin/python bench/controlnet.py --size 128 --steps 8 --rounds 5

The demo models are tiny, so the figures show the per-job overhead of the ControlNet path (pipeline
construction, control-image encoding, the extra network per step) next to a tiny denoiser, not what a
real model's ControlNet costs on a GPU. Prints a table and writes JSON (``--json``, default
bench/results/controlnet.json). Each configuration gets one untimed warm-up; the median is reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sdworker.domain.request import ControlUnit, GenerationRequest, InputImage
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
FAMILIES = {"sd15": ("demo-sd15", "demo-controlnet"), "flux1": ("demo-flux1", "demo-flux1-controlnet")}


def stripes(size: int, vertical: bool) -> Image.Image:
    grid = np.zeros((size, size, 3), dtype=np.uint8)
    if vertical:
        grid[:, ::8] = 255
    else:
        grid[::8, :] = 255
    return Image.fromarray(grid)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=list(FAMILIES))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--cache-dir", type=Path, default=None, help="where the demo bundle is (built if missing)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "controlnet.json")
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as scratch:
        cache = args.cache_dir or Path(scratch)
        engine = DiffusersEngine(Settings(model="demo", cache_dir=cache, device=args.device))
        try:
            for family in args.families:
                model, net = FAMILIES[family]
                maps = [InputImage.from_image(stripes(args.size, i == 0), f"controlnet.{i}.image") for i in range(2)]
                for count in (0, 1, 2):
                    units = tuple(ControlUnit(net, maps[i], 0.8, 0.0, 1.0) for i in range(count))
                    request = GenerationRequest("a photo of a cat", model=model, seed=1, width=args.size,
                                                height=args.size, num_inference_steps=args.steps, controlnet=units)
                    engine.generate(request)  # warm-up (loads the model and the ControlNet)
                    times = []
                    for _ in range(args.rounds):
                        started = time.perf_counter()
                        engine.generate(request)
                        times.append(time.perf_counter() - started)
                    row = {"family": family, "model": model, "units": count, "seconds_median": statistics.median(times),
                           "seconds_all": times}
                    rows.append(row)
                    print(f"{model} {count} units: {row['seconds_median']:.3f} s", file=sys.stderr)
        finally:
            engine.close()
    result = {"device": args.device, "size": args.size, "steps": args.steps, "rows": rows}
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")
    return 0


def print_table(result: dict[str, Any]) -> None:
    print(f"\nControlNet jobs on {result['device']}, {result['size']} px, {result['steps']} steps, median of rounds\n")
    print("| model | units | seconds per job | vs no unit |")
    print("|---|---|---|---|")
    base: dict[str, float] = {}
    for row in result["rows"]:
        base.setdefault(row["model"], row["seconds_median"])
        ratio = row["seconds_median"] / base[row["model"]]
        print(f"| {row['model']} | {row['units']} | {row['seconds_median']:.3f} | x{ratio:.2f} |")


if __name__ == "__main__":
    raise SystemExit(main())

"""What an upscaler model costs: our RRDBNet (``sdworker.engine.rrdbnet``) upscaling one image, per input
size, through ``Upscalers.upscale`` (the model, then Lanczos to the target size) as the hires fix and
``image_upscale`` jobs call it. Random weights: the time is the architecture's, not the picture's.

    .venv/bin/python bench/upscaler.py                        # the demo's tiny x4 net and ESRGAN x4's real shape
    .venv/bin/python bench/upscaler.py --sizes 64 128 --rounds 3
    .venv/bin/python bench/upscaler.py --device cuda

``demo`` is the bundle's (8 features, 1 block); ``esrgan-x4`` is RealESRGAN_x4plus's shape (64 features,
23 blocks, 16.7 M parameters). Prints a table and writes JSON (``--json``, default
bench/results/upscaler.json). Each configuration gets one untimed warm-up; the median of the rounds
is reported.
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

import torch
from PIL import Image

from sdworker.engine.rrdbnet import RRDBNet
from sdworker.engine.upscalers import Upscalers

ROOT = Path(__file__).resolve().parent.parent
ARCHS: dict[str, dict[str, int]] = {"demo": {"features": 8, "blocks": 1, "grow": 4},
                                    "esrgan-x4": {"features": 64, "blocks": 23, "grow": 32}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", nargs="+", default=list(ARCHS), choices=list(ARCHS))
    parser.add_argument("--sizes", nargs="+", type=int, default=[64, 128], help="input sides in px (output x4)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "upscaler.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as folder:
        for arch in args.archs:
            torch.manual_seed(0)
            net = RRDBNet(scale=4, **ARCHS[arch])
            torch.save(net.state_dict(), Path(folder) / f"{arch}.pth")
            parameters = sum(p.numel() for p in net.parameters())
            upscalers = Upscalers(Path(folder))
            for size in args.sizes:
                image = Image.new("RGB", (size, size), (120, 80, 200))
                target = (size * 4, size * 4)
                upscalers.upscale(arch, [image], target, device)  # warm-up (and the load)
                times = []
                for _ in range(args.rounds):
                    started = time.perf_counter()
                    upscalers.upscale(arch, [image], target, device)
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    times.append(time.perf_counter() - started)
                row = {"arch": arch, "parameters": parameters, "input": size, "output": size * 4,
                       "seconds_median": statistics.median(times), "seconds_all": times}
                rows.append(row)
                print(f"{arch} {size}px: {row['seconds_median']:.3f} s", file=sys.stderr)
    result = {"device": str(device), "torch_threads": torch.get_num_threads(), "rows": rows}
    print_table(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")
    return 0


def print_table(result: dict[str, Any]) -> None:
    print(f"\nupscaler models on {result['device']} ({result['torch_threads']} torch threads), median of rounds\n")
    print("| arch | parameters | input px | output px | seconds |")
    print("|---|---|---|---|---|")
    for row in result["rows"]:
        print(f"| {row['arch']} | {row['parameters']:,} | {row['input']} | {row['output']} | "
              f"{row['seconds_median']:.3f} |")


if __name__ == "__main__":
    raise SystemExit(main())

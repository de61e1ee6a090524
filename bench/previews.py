"""What live previews cost: generation time with previews off vs each decoder, and bytes per preview.

Drives the engine exactly as the service does: ``DiffusersEngine.generate(request, on_step=hook)``
with the service's own hook (``sdworker.jobs.progress.StepReporter``, one watcher, JPEG q80): when a
preview is due (every N steps, never on the last step, whose final image follows at once) it calls
``view.render_preview(method, max_size)`` and hands the pixels to one encoder thread, skipping the
preview (decode included) while the previous one is still being encoded. ``min_interval_ms`` is 0:
the point is each decoder's own cost per step. Configurations run interleaved (A B C ... A B C ...,
the order rotated each round) in one process, on the same model and seed, so drift hits them all
alike; each gets one untimed warm-up.

    .venv/bin/python bench/previews.py --arch demo
    .venv/bin/python bench/previews.py --arch sd15                  # real SD 1.5 shapes, random weights, 256 px
    .venv/bin/python bench/previews.py --arch sd15 --device cuda --dtype float16 --size 512
    .venv/bin/python bench/previews.py --arch sd15 --methods taesd --every 5 --rounds 4   # one target, more runs

Prints a table and writes JSON (``--json``, default bench/results/previews.json). Byte counts come from
the previews the runs decoded, encoded afterwards in each format; with random weights they are noise,
the worst case for JPEG/WebP (a real picture compresses better).
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: make `bench.archs` and `sdworker` importable
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from diffusers.models import AutoencoderTiny  # noqa: E402

from sdworker.domain.request import GenerationRequest  # noqa: E402
from sdworker.events.types import PreviewReady  # noqa: E402
from sdworker.imaging.encode import encode_image  # noqa: E402
from sdworker.jobs.metrics import ServiceMetrics  # noqa: E402
from sdworker.jobs.progress import StepReporter  # noqa: E402
from sdworker.previews.options import PreviewOptions  # noqa: E402
from sdworker.previews.taesd import build_random_taesd  # noqa: E402
from sdworker.settings import Settings  # noqa: E402

METHODS = ("latent2rgb", "taesd", "vae")
EVERY = (1, 5)
FORMATS = ("jpeg", "webp", "png")
QUALITY = 80
# The targets, as the ratio of generation time with previews to previews off.
TARGETS = {("latent2rgb", 1): 1.01, ("taesd", 1): 1.03, ("taesd", 5): 1.03}
PROMPT = "a photograph of an astronaut riding a horse"


@dataclass(frozen=True, slots=True)
class Config:
    method: str  # "off" or a decoder
    every: int

    @property
    def name(self) -> str:
        return "off" if self.method == "off" else f"{self.method} every={self.every}"


@dataclass
class PreviewCounter:
    """What one generation's hook did, and a few decoded previews kept for the byte counts."""

    decoded: int = 0
    skipped: int = 0
    decode_seconds: float = 0.0
    samples: list[npt.NDArray[np.uint8]] = field(default_factory=list)


def make_reporter(
    config: Config, max_size: int, encoder: ThreadPoolExecutor, metrics: ServiceMetrics
) -> tuple[StepReporter, list[Any], list[npt.NDArray[np.uint8]]]:
    """The service's own step hook (sdworker.jobs.progress.StepReporter) with one watcher, no
    min_interval_ms, JPEG at the default quality; it decodes on the calling thread and encodes on
    ``encoder``. Returns the reporter, the list its events land in, and the decoded pixels it saw."""
    events: list[Any] = []
    samples: list[npt.NDArray[np.uint8]] = []

    def encode(pixels: npt.NDArray[np.uint8], fmt: str, quality: int) -> bytes:
        if len(samples) < 4:  # list.append is atomic: safe from the encoder thread
            samples.append(pixels)
        return encode_image(pixels, fmt, quality)

    options = PreviewOptions(
        every=config.every,
        min_interval_ms=0,
        method="none" if config.method == "off" else config.method,
        max_size=max_size,
        format="jpeg",
        quality=QUALITY,
    )
    reporter = StepReporter(
        "bench",
        options,
        publish=events.append,
        watcher_count=lambda: 1,
        encoder=encoder,
        encode=encode,
        metrics=metrics,
    )
    return reporter, events, samples


def build_engine(arch: str, device: str, dtype: str, workdir: Path, seed: int) -> Any:
    from bench import archs
    from sdworker.engine.diffusers_engine import DiffusersEngine

    taesd_dir = workdir / "taesd"
    if arch == "demo":
        pipe = archs.build_demo_pipeline()
        taesd = build_random_taesd(seed)
    else:
        pipe = archs.build_sd15_pipeline(seed=seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            # TAESD's published config (facts.md) is AutoencoderTiny's default: 64 channels,
            # encoder blocks (1, 3, 3, 3), decoder blocks (3, 3, 3, 1); random weights here.
            taesd = AutoencoderTiny()
    taesd.save_pretrained(taesd_dir, safe_serialization=True)
    # from_pipeline runs on the pipeline's own device and dtype; the TAESD is loaded to match them.
    pipe = pipe.to(torch.device(device), getattr(torch, dtype))
    settings = Settings(device=device, dtype=dtype, taesd=str(taesd_dir), cache_dir=workdir / "cache")
    return DiffusersEngine.from_pipeline(pipe, settings, f"bench-{arch}")


def run_once(engine: Any, request: GenerationRequest, config: Config, max_size: int) -> tuple[float, PreviewCounter]:
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="preview-encoder") as encoder:
        metrics = ServiceMetrics()
        reporter, events, samples = make_reporter(config, max_size, encoder, metrics)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        started = time.perf_counter()
        engine.generate(request, on_step=reporter)
        seconds = time.perf_counter() - started  # generate returns PIL images: the device is done
        reporter.wait_idle(timeout=60)
    decode_seconds = metrics.registry.get_sample_value("sdworker_preview_decode_seconds_sum") or 0.0
    previews = [e for e in events if isinstance(e, PreviewReady)]
    counter = PreviewCounter(len(previews), reporter.previews_skipped, decode_seconds, samples)
    if config.method != "off" and not previews:
        raise SystemExit(f"{config.name}: no preview was produced (render_preview returned None?)")
    return seconds, counter


def bytes_per_format(samples: list[npt.NDArray[np.uint8]]) -> dict[str, dict[str, float]]:
    table: dict[str, dict[str, float]] = {}
    if not samples:
        return table
    for fmt in FORMATS:
        sizes, base64_sizes, times = [], [], []
        for pixels in samples:
            started = time.perf_counter()
            data = encode_image(pixels, fmt, QUALITY)
            times.append(time.perf_counter() - started)
            sizes.append(len(data))
            base64_sizes.append(len(base64.b64encode(data)))
        table[fmt] = {
            "bytes": statistics.mean(sizes),
            "base64_bytes": statistics.mean(base64_sizes),
            "encode_ms": 1000 * statistics.median(times),
        }
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", choices=("demo", "sd15"), default="demo")
    parser.add_argument("--size", type=int, default=None, help="image side in px (default 256)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps (demo 20, sd15 10)")
    parser.add_argument("--rounds", type=int, default=None, help="timed runs per configuration (demo 5, sd15 2)")
    parser.add_argument("--max-size", type=int, default=256, help="preview longest side")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "previews.json")
    parser.add_argument("--render", type=Path, default=None, help="print the tables of a saved JSON and exit")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS), help="decoders to time")
    parser.add_argument("--every", nargs="+", type=int, default=list(EVERY), help="preview intervals to time")
    args = parser.parse_args(argv)
    if any(every < 1 for every in args.every):
        parser.error("--every: steps between previews, 1 or more (previews off always runs as the baseline)")
    if args.render is not None:
        print_tables(json.loads(args.render.read_text()))
        return 0
    size = args.size or 256
    if args.threads:
        torch.set_num_threads(args.threads)
    steps = args.steps or (20 if args.arch == "demo" else 10)
    rounds = args.rounds or (5 if args.arch == "demo" else 2)

    # "off" always runs: every ratio is against it, measured in the same rounds.
    configs = [Config("off", 0)] + [Config(m, e) for m in args.methods for e in args.every]
    request = GenerationRequest(prompt=PROMPT, num_inference_steps=steps, width=size, height=size, seed=args.seed)
    times: dict[Config, list[float]] = {c: [] for c in configs}
    counters: dict[Config, list[PreviewCounter]] = {c: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="sdworker-bench-") as tmp:
        print(f"building {args.arch} on {args.device}/{args.dtype} ...", file=sys.stderr)
        engine = build_engine(args.arch, args.device, args.dtype, Path(tmp), args.seed)
        try:
            for config in configs:  # warm-up: first calls allocate, pick kernels, fill caches
                run_once(engine, request, config, args.max_size)
            for round_index in range(rounds):
                shift = round_index % len(configs)
                for config in configs[shift:] + configs[:shift]:
                    seconds, counter = run_once(engine, request, config, args.max_size)
                    times[config].append(seconds)
                    counters[config].append(counter)
                    print(f"round {round_index + 1}/{rounds} {config.name:<18} {seconds:8.3f} s", file=sys.stderr)
        finally:
            engine.close()

    # Other work on the machine only ever adds time, so the fastest run is the best estimate of a
    # configuration's own cost; the targets are checked on it. Medians are reported beside it.
    off_best, off_median = min(times[configs[0]]), statistics.median(times[configs[0]])
    rows = []
    for config in configs:
        best, median = min(times[config]), statistics.median(times[config])
        runs = counters[config]
        decoded = sum(c.decoded for c in runs)
        target = TARGETS.get((config.method, config.every))
        ratio = best / off_best
        rows.append(
            {
                "config": config.name,
                "method": config.method,
                "every": config.every,
                "seconds": times[config],
                "best_seconds": best,
                "median_seconds": median,
                "ratio_vs_off": ratio,
                "median_ratio_vs_off": median / off_median,
                "previews_per_run": decoded / len(runs),
                "skipped_per_run": sum(c.skipped for c in runs) / len(runs),
                "decode_ms_per_preview": 1000 * sum(c.decode_seconds for c in runs) / decoded if decoded else None,
                "target_ratio": target,
                "meets_target": None if target is None else ratio <= target,
            }
        )
    payload = {
        method: bytes_per_format([s for c in configs if c.method == method for r in counters[c] for s in r.samples])
        for method in args.methods
    }
    preview_shape = next((list(s.shape) for c in configs for r in counters[c] for s in r.samples), None)
    result = {
        "arch": args.arch,
        "device": args.device,
        "dtype": args.dtype,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "size": size,
        "steps": steps,
        "rounds": rounds,
        "max_size": args.max_size,
        "preview_shape": preview_shape,
        "quality": QUALITY,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "runs": rows,
        "bytes_per_preview": payload,
    }
    print_tables(result)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {args.json}")
    return 0


def decode_only_ratio(row: dict[str, Any], off_seconds: float) -> float:
    """1 + the decode time the hook itself measured on the denoising thread, over a run with previews off.

    Wall-clock ratios on a shared CPU carry a few percent of noise (two identical runs with previews
    off can differ by more than the 1 % target); this is the part of the cost that previews add to
    the critical path (encoding runs on another thread), timed directly."""
    if not row["decode_ms_per_preview"]:
        return 1.0
    return 1.0 + row["previews_per_run"] * row["decode_ms_per_preview"] / 1000.0 / off_seconds


def print_tables(result: dict[str, Any]) -> None:
    print(
        f"\n{result['arch']} {result['size']} px, {result['steps']} steps, {result['device']}/{result['dtype']}, "
        f"best and median of {result['rounds']} runs, previews at max {result['max_size']} px"
    )
    header = (
        "previews", "best s", "vs off", "median s", "vs off", "target (best)", "previews", "skipped", "ms/decode",
        "decode-only",
    )
    widths = (18, 8, 7, 8, 7, 13, 8, 7, 9, 11)
    off_best = result["runs"][0]["best_seconds"]
    print(
        "| "
        + " | ".join(f"{h:>{w}}" if i else f"{h:<{w}}" for i, (h, w) in enumerate(zip(header, widths, strict=True)))
        + " |"
    )
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in result["runs"]:
        target = ""
        if row["target_ratio"] is not None:
            target = f"<={row['target_ratio']:.2f} {'ok' if row['meets_target'] else 'MISS'}"
        decode = "" if row["decode_ms_per_preview"] is None else f"{row['decode_ms_per_preview']:.1f}"
        cells = (
            f"{row['config']:<18}",
            f"{row['best_seconds']:8.3f}",
            f"{row['ratio_vs_off']:6.3f}x",
            f"{row['median_seconds']:8.3f}",
            f"{row['median_ratio_vs_off']:6.3f}x",
            f"{target:>13}",
            f"{row['previews_per_run']:8.1f}",
            f"{row['skipped_per_run']:7.1f}",
            f"{decode:>9}",
            f"{decode_only_ratio(row, off_best):10.4f}x",
        )
        print("| " + " | ".join(cells) + " |")
    shape = result["preview_shape"]
    print(
        f"\nbytes per preview ({shape[1]}x{shape[0]} px, quality {result['quality']}; base64 in brackets)"
        if shape
        else "\nbytes per preview"
    )
    print(f"| {'method':<10} | " + " | ".join(f"{fmt:>22}" for fmt in FORMATS) + " |")
    print("|" + "|".join("-" * w for w in (12, 24, 24, 24)) + "|")
    for method, formats in result["bytes_per_preview"].items():
        cells = [
            f"{v['bytes'] / 1000:6.1f} KB ({v['base64_bytes'] / 1000:5.1f}) {v['encode_ms']:4.1f}ms"
            for v in formats.values()
        ]
        print(f"| {method:<10} | " + " | ".join(f"{c:>22}" for c in cells) + " |")


if __name__ == "__main__":
    raise SystemExit(main())

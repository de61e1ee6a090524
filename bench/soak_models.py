"""Churn soak: generations cycling 2 models x 4 LoRAs (plus a LoRA-free job per model) where only one
model fits, so every model change evicts and reloads; resident memory printed every --every.

    .venv/bin/python bench/soak_models.py                          # 200 jobs, --max-loaded-models 1
    .venv/bin/python bench/soak_models.py --jobs 2000 --limit budget  # a byte budget that holds one model
    .venv/bin/python bench/soak_models.py --jobs 40 --every 10
    .venv/bin/python bench/soak_models.py --models flow --jobs 600  # demo-flux1 (4 LoRAs) + demo-zimage

``--limit count``: ``max_loaded_models=1``; ``--limit budget``: no count limit, ``max_loaded_bytes`` set
to the bigger model's size plus half the smaller one's, so the byte budget does the evicting.

The verdict is the RSS slope after warm-up (a least-squares line through the samples after
``--warmup`` jobs, in KB per job): above ``--max-slope-kb`` (1 KB/job; meant for runs of 2,000 jobs,
where a leak of 88 KB per model load shows as ~18 KB/job) the soak exits 1.

The demo bundle ships 2 LoRAs for demo-sd15 and 1 for demo-sdxl; the soak writes 4 per model (random,
non-zero, peft and kohya layouts alternating for SD 1.x) into its own LoRA folder. Each LoRA-free job
must give the same pixels every cycle (nothing leaks between jobs); the soak fails if one differs.
A flat RSS after the first cycles means model and adapter memory is given back on eviction.
``--models flow`` churns the transformer families instead: demo-flux1 with 4 kohya LoRAs of its own
and demo-zimage (no LoRA: each of its jobs is a LoRA-free one), so every cycle evicts and reloads a
FLUX.1 and a Z-Image folder.
Prints a table; writes JSON (--json).
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing


def rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def write_loras(folder: Path) -> dict[str, list[str]]:
    """4 LoRAs per demo model; returns model name -> LoRA names."""
    import torch
    from safetensors.torch import save_file

    from sdworker.engine.demo_model import (
        DEMO_SD15,
        DEMO_SDXL,
        build_demo_components,
        build_demo_lora,
        build_demo_sdxl_components,
    )

    folder.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[str]] = {}
    with torch.random.fork_rng(devices=[]):
        components = {DEMO_SD15: build_demo_components(), DEMO_SDXL: build_demo_sdxl_components()}
    for model, parts in components.items():
        made[model] = []
        for i in range(4):
            fmt = "kohya" if model == DEMO_SD15 and i % 2 else "peft"
            name = f"soak-{model}-{i}"
            save_file(build_demo_lora(parts, fmt, seed=100 + i), str(folder / f"{name}.safetensors"))
            made[model].append(name)
    return made


def write_flow_loras(folder: Path) -> dict[str, list[str]]:
    """4 kohya LoRAs for demo-flux1, none for demo-zimage; returns model name -> LoRA names."""
    import torch
    from safetensors.torch import save_file

    from sdworker.engine.demo_flow import DEMO_FLUX1, build_demo_flux1_components, build_flux1_kohya_lora
    from sdworker.engine.demo_model import SEED
    from sdworker.engine.demo_zimage import DEMO_ZIMAGE

    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        transformer = build_demo_flux1_components(SEED)["transformer"]
    names = []
    for i in range(4):
        name = f"soak-{DEMO_FLUX1}-{i}"
        save_file(build_flux1_kohya_lora(transformer, 100 + i), str(folder / f"{name}.safetensors"))
        names.append(name)
    return {DEMO_FLUX1: names, DEMO_ZIMAGE: []}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--every", type=int, default=20, help="print RSS every N jobs")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--cache-dir", default=None)
    parser.add_argument("--limit", choices=("count", "budget"), default="count",
                        help="what evicts: --max-loaded-models 1, or a byte budget that holds one model")
    parser.add_argument("--models", choices=("unet", "flow"), default="unet",
                        help="demo-sd15 + demo-sdxl, or demo-flux1 + demo-zimage")
    parser.add_argument("--warmup", type=int, default=None, help="jobs before the slope is measured "
                        "(default: a tenth of --jobs, at least 100)")
    parser.add_argument("--max-slope-kb", type=float, default=1.0, help="fail above this RSS slope (KB/job)")
    parser.add_argument("--json", default="bench/results/soak_models.json")
    args = parser.parse_args(argv)
    warmup = args.warmup if args.warmup is not None else max(100, args.jobs // 10)

    import numpy as np

    from sdworker.domain.request import GenerationRequest, LoraRef
    from sdworker.engine.demo_model import MODELS_DIR, ensure_demo_bundle
    from sdworker.engine.diffusers_engine import DiffusersEngine
    from sdworker.settings import Settings

    cache = Path(args.cache_dir or tempfile.mkdtemp(prefix="sdworker-soak-"))
    bundle = ensure_demo_bundle(cache)
    lora_dir = Path(tempfile.mkdtemp(prefix="sdworker-soak-loras-"))
    per_model = write_loras(lora_dir) if args.models == "unet" else write_flow_loras(lora_dir)
    plan: list[tuple[str, str | None]] = []
    for model, names in per_model.items():
        plan += [(model, name) for name in names] + [(model, None)]
    models_dir = Path(tempfile.mkdtemp(prefix="sdworker-soak-models-"))
    for model in per_model:  # the two models alone (the bundle's other families are not part of the churn)
        (models_dir / model).symlink_to(bundle / MODELS_DIR / model)
    base = {"models_dir": str(models_dir), "lora_dir": str(lora_dir), "cache_dir": cache, "device": "cpu"}
    limit: dict[str, Any] = {"max_loaded_models": 1}
    if args.limit == "budget":
        sizes = [m.size_bytes or 0 for m in DiffusersEngine(Settings(**base)).list_models()]
        limit = {"max_loaded_bytes": max(sizes) + min(sizes) // 2}
    engine = DiffusersEngine(Settings(**base, **limit))
    engine.load()
    print(f"limit: {limit}")
    samples: list[dict[str, Any]] = [{"jobs": 0, "rss_mb": round(rss_mb(), 3), "seconds": 0.0}]
    print(f"{'jobs':>6} {'RSS MB':>8} {'seconds':>8} {'loads':>6}")
    print(f"{0:>6} {samples[0]['rss_mb']:>8.1f} {0.0:>8.1f} {0:>6}")
    plain: dict[str, Any] = {}
    loads = 0
    drifted = 0
    started = time.perf_counter()

    def count(name: str, phase: str, seconds: float) -> None:
        nonlocal loads
        loads += phase == "finished"

    for job in range(1, args.jobs + 1):
        model, lora = plan[(job - 1) % len(plan)]
        refs = (LoraRef(lora, 0.8),) if lora else ()
        result = engine.generate(
            GenerationRequest("a photo of a cat", model=model, loras=refs, num_inference_steps=args.steps,
                              width=args.size, height=args.size, seed=7),
            on_model_load=count,
        )
        if lora is None:
            image = np.asarray(result.images[0])
            if model in plain and not np.array_equal(plain[model], image):
                drifted += 1
            plain.setdefault(model, image)
        del result
        if job % args.every == 0:
            gc.collect()
            sample = {"jobs": job, "rss_mb": round(rss_mb(), 3), "seconds": round(time.perf_counter() - started, 1),
                      "loads": loads}
            samples.append(sample)
            print(f"{job:>6} {sample['rss_mb']:>8.1f} {sample['seconds']:>8.1f} {loads:>6}")
    after = [s for s in samples if s["jobs"] >= warmup]
    growth = after[-1]["rss_mb"] - after[0]["rss_mb"] if after else float("nan")
    slope = slope_kb_per_job(after)
    print(f"RSS after warm-up (job {warmup}): {growth:+.1f} MB, slope {slope:+.3f} KB/job "
          f"(limit {args.max_slope_kb} KB/job); model loads: {loads}; "
          f"LoRA-free jobs that differed from their first: {drifted}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"jobs": args.jobs, "models": list(per_model), "limit": args.limit,
                               "settings": limit, "size": args.size,
                               "steps": args.steps, "warmup_jobs": warmup, "samples": samples,
                               "rss_growth_after_warmup_mb": growth, "slope_kb_per_job": slope,
                               "max_slope_kb_per_job": args.max_slope_kb, "model_loads": loads,
                               "plain_jobs_drifted": drifted}, indent=2))
    too_steep = not slope <= args.max_slope_kb  # a NaN slope (too few samples) fails too
    return 1 if drifted or too_steep else 0


def slope_kb_per_job(samples: list[dict[str, Any]]) -> float:
    """The least-squares slope of RSS (MB) over jobs, in KB per job; NaN with fewer than 3 samples."""
    if len(samples) < 3:
        return float("nan")
    xs = [float(s["jobs"]) for s in samples]
    ys = [float(s["rss_mb"]) for s in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    spread = sum((x - mean_x) ** 2 for x in xs)
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / spread * 1024


if __name__ == "__main__":
    raise SystemExit(main())

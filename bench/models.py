"""Model and LoRA switching costs: cold model load, switch between loaded models, LoRA apply/remove per
job, the per-step cost of an active LoRA (unfused vs fused) and the pixel drift fusing leaves behind.

    .venv/bin/python bench/models.py                          # the demo bundle (two tiny models, LoRAs)
    .venv/bin/python bench/models.py --models-dir /models --lora-dir /loras --models a b --loras x y --size 512

Rows (medians over --rounds):

- ``cold load``: a model not in memory, loaded from disk (max_loaded_models 1: the other one left);
- ``warm switch``: a job on the other model when both stay loaded (max_loaded_models 2), minus a job
  on the same model;
- ``lora first apply``: ``activate`` of a LoRA never loaded (read + inject as a peft adapter);
- ``lora cached apply`` / ``lora remove``: activating a loaded LoRA again / a LoRA-free job after it;
- ``s/step none | unfused | fused``: denoising step time without LoRA, with an active adapter, with the
  adapter merged into the weights;
- ``fused drift``: largest pixel difference (0-255) between a LoRA-free job after fuse + unfuse and the
  same job on a fresh engine (unfused switching is exact: 0).

The demo models are too small for the per-step rows to mean much; ``--step-arch sd15`` measures them
on SD 1.5's real architecture (random weights, built in memory) with a rank-16 LoRA on every attention
projection of the UNet and the text encoder, at ``--step-size`` px:

    .venv/bin/python bench/models.py --step-arch sd15 --step-size 256 --rounds 2

Prints a table; writes JSON (--json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--models-dir", default=None, help="default: the demo bundle's models")
    parser.add_argument("--lora-dir", default=None, help="default: the demo bundle's LoRAs")
    parser.add_argument("--cache-dir", default=None, help="where the demo bundle is built (a temporary folder)")
    parser.add_argument("--models", nargs=2, default=None,
                        help="two model names (default: the first two plain UNet models)")
    parser.add_argument("--loras", nargs="+", default=None, help="LoRAs for the first model (default: all that fit)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--step-arch", choices=("demo", "sd15"), default="demo",
                        help="architecture for the s/step rows (sd15: SD 1.5's, random weights)")
    parser.add_argument("--step-size", type=int, default=256, help="image side for --step-arch sd15")
    parser.add_argument("--json", default="bench/results/models.json")
    args = parser.parse_args(argv)

    import numpy as np

    from sdworker.domain.request import GenerationRequest, LoraRef
    from sdworker.engine.diffusers_engine import DiffusersEngine
    from sdworker.engine.models import resolve_device
    from sdworker.engine.protocol import StepView
    from sdworker.errors import InvalidRequest
    from sdworker.settings import Settings

    cache = Path(args.cache_dir or tempfile.mkdtemp(prefix="sdworker-bench-"))
    models_dir, lora_dir = args.models_dir, args.lora_dir
    if models_dir is None:
        from sdworker.engine.demo_model import LORAS_DIR, MODELS_DIR, ensure_demo_bundle

        bundle = ensure_demo_bundle(cache)
        models_dir, lora_dir = str(bundle / MODELS_DIR), lora_dir or str(bundle / LORAS_DIR)

    def settings(max_loaded: int) -> Settings:
        return Settings(models_dir=models_dir, lora_dir=lora_dir, cache_dir=cache, device=args.device,
                        dtype=args.dtype, max_loaded_models=max_loaded)

    probe = DiffusersEngine(settings(1))
    names = args.models or [m.name for m in probe.list_models()
                            if m.family in ("sd1", "sd2", "sdxl") and not m.variant][:2]  # plain txt2img UNets
    first = probe.library.model(names[0])
    loras = args.loras
    if loras is None:
        loras = []
        for lora in probe.list_loras():
            try:
                probe.library.check_lora_fits(probe.library.lora(lora.name), first)
                loras.append(lora.name)
            except InvalidRequest:
                pass
    if not loras:
        print(f"no LoRA fits {names[0]}; give --loras", file=sys.stderr)
        return 2

    def request(model: str, lora: str | None = None, steps: int = args.steps) -> GenerationRequest:
        refs = (LoraRef(lora, 0.8),) if lora else ()
        return GenerationRequest("a photo of a cat", model=model, loras=refs, num_inference_steps=steps,
                                 width=args.size, height=args.size, seed=1234)

    def timed(engine: DiffusersEngine, req: GenerationRequest) -> tuple[float, list[float], Any]:
        marks: list[float] = []

        def hook(view: StepView) -> None:
            marks.append(time.perf_counter())

        started = time.perf_counter()
        result = engine.generate(req, on_step=hook)
        steps = [b - a for a, b in itertools.pairwise(marks)]
        return time.perf_counter() - started, steps, result

    # Cold loads: one model in memory, alternate.
    cold: list[float] = []
    engine = DiffusersEngine(settings(1))
    for _ in range(args.rounds):
        for name in names:
            seconds: list[float] = []
            engine.generate(
                request(name, steps=1),
                on_model_load=lambda n, phase, s, _out=seconds: _out.append(s) if phase == "finished" else None,
            )
            cold.extend(seconds)
    engine.close()

    # Warm switches: both in memory.
    engine = DiffusersEngine(settings(2))
    for name in names:
        engine.generate(request(name, steps=1))
    same, switched = [], []
    for _ in range(args.rounds):
        same.append(timed(engine, request(names[0]))[0])
        switched.append(timed(engine, request(names[1]))[0])
        switched.append(timed(engine, request(names[0]))[0])
        same.append(timed(engine, request(names[0]))[0])
    engine.close()

    # LoRA apply/remove and per-step cost, unfused.
    applies: dict[str, list[float]] = {"first": [], "cached": [], "remove": []}
    per_step: dict[str, list[float]] = {"none": [], "unfused": [], "fused": []}
    for fuse in (False, True):
        engine = DiffusersEngine(settings(1), fuse_loras=fuse)
        engine.generate(request(names[0], steps=1))
        slot = engine._slot(engine.library.model(names[0]), None)
        original = slot.loras.activate
        last: list[float] = []

        def measured(*a: Any, _original: Any = original, _last: list[float] = last, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return _original(*a, **k)
            finally:
                _last.append(time.perf_counter() - t)

        slot.loras.activate = measured  # type: ignore[method-assign]
        for round_index in range(args.rounds):
            for lora in loras:
                kind = "fused" if fuse else "unfused"
                last.clear()
                _, steps, _ = timed(engine, request(names[0], lora))
                per_step[kind].extend(steps)
                if not fuse:
                    applies["first" if round_index == 0 else "cached"].append(last[-1])
                last.clear()
                _, steps, _ = timed(engine, request(names[0]))
                per_step["none"].extend(steps)
                if not fuse:
                    applies["remove"].append(last[-1])
        if fuse:
            after = timed(engine, request(names[0]))[2]
        engine.close()
    fresh = DiffusersEngine(settings(1))
    clean = fresh.generate(request(names[0]))
    drift = int(np.abs(np.asarray(after.images[0]).astype(int) - np.asarray(clean.images[0]).astype(int)).max())
    fresh.close()

    step_arch = "demo"
    if args.step_arch == "sd15":
        per_step = sd15_step_costs(args.step_size, args.steps, args.rounds)
        step_arch = f"sd15 {args.step_size}px"

    def med(values: list[float]) -> float | None:
        return statistics.median(values) if values else None

    warm = (med(switched) or 0.0) - (med(same) or 0.0)
    result: dict[str, Any] = {
        "models": names, "loras": loras, "size": args.size, "steps": args.steps, "rounds": args.rounds,
        "device": str(resolve_device(settings(1))[0]), "platform": platform.platform(),
        "cold_load_s": med(cold), "warm_switch_extra_s": warm, "same_model_job_s": med(same),
        "lora_first_apply_s": med(applies["first"]), "lora_cached_apply_s": med(applies["cached"]),
        "lora_remove_s": med(applies["remove"]),
        "s_per_step_none": med(per_step["none"]), "s_per_step_unfused": med(per_step["unfused"]),
        "s_per_step_fused": med(per_step["fused"]), "fused_drift_max_pixel": drift, "step_arch": step_arch,
    }
    rows = [
        ("cold load", result["cold_load_s"]), ("warm switch (extra)", warm),
        ("lora first apply", result["lora_first_apply_s"]), ("lora cached apply", result["lora_cached_apply_s"]),
        ("lora remove", result["lora_remove_s"]), (f"s/step none ({step_arch})", result["s_per_step_none"]),
        ("s/step unfused lora", result["s_per_step_unfused"]), ("s/step fused lora", result["s_per_step_fused"]),
    ]
    print(f"models {names[0]} / {names[1]}, LoRAs {', '.join(loras)}, {args.size} px, {args.steps} steps")
    print(f"{'':28} {'seconds':>10}")
    for label, value in rows:
        print(f"{label:28} {value if value is not None else float('nan'):>10.4f}")
    print(f"{'fused drift (0-255)':28} {drift:>10d}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return 0


def sd15_step_costs(size: int, steps: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per denoising step on SD 1.5's architecture: no LoRA, a rank-16 LoRA unfused, fused."""
    import gc

    from safetensors.torch import save_file

    from bench.archs import build_sd15_pipeline
    from sdworker.domain.request import GenerationRequest, LoraRef
    from sdworker.engine.demo_model import build_demo_lora
    from sdworker.engine.diffusers_engine import DiffusersEngine
    from sdworker.engine.protocol import StepView
    from sdworker.settings import Settings

    folder = Path(tempfile.mkdtemp(prefix="sdworker-bench-loras-"))
    costs: dict[str, list[float]] = {"none": [], "unfused": [], "fused": []}
    for fuse in (False, True):
        pipe = build_sd15_pipeline()
        pipe.set_progress_bar_config(disable=True)
        if not fuse:
            parts = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
            save_file(build_demo_lora(parts, "peft", seed=5, rank=16, scale=0.01), str(folder / "r16.safetensors"))
        engine = DiffusersEngine.from_pipeline(pipe, Settings(device="cpu", lora_dir=str(folder)), "sd15",
                                               fuse_loras=fuse)
        for _ in range(rounds):
            for kind, loras in (("none", ()), ("fused" if fuse else "unfused", (LoraRef("r16", 0.8),))):
                marks: list[float] = []

                def hook(view: StepView, _marks: list[float] = marks) -> None:
                    _marks.append(time.perf_counter())

                engine.generate(GenerationRequest("a photo of a cat", loras=loras, num_inference_steps=steps,
                                                  width=size, height=size, seed=1), on_step=hook)
                costs[kind].extend(b - a for a, b in itertools.pairwise(marks))
        engine.close()
        del engine, pipe
        gc.collect()
    return costs


if __name__ == "__main__":
    raise SystemExit(main())

"""The bench scripts run end to end on the demo model, at toy sizes, and write the numbers they print.

No timing is asserted (speed lives in the benchmarks themselves); these keep the scripts from rotting."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_bench(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_engine_bench_smoke(tmp_path: Path) -> None:
    module = load_bench("engine")
    out = tmp_path / "engine.json"
    argv = ["--arch", "demo", "--steps", "2", "--rounds", "1", "--batches", "1", "2"]
    assert module.main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["arch"] == "demo" and result["device"] == "cpu"
    assert len(result["direct_s_per_step"]) == len(result["engine_s_per_step"]) == 1
    assert result["overhead_ratio"] > 0
    assert isinstance(result["engine_python_us_per_step"], float)  # how large is the benchmark's to report
    rows = {(row["mode"], row["batch"]): row for row in result["throughput"]}
    assert set(rows) == {("direct", 1), ("eager", 1), ("eager", 2)}
    assert all(len(row["seconds"]) == 1 and row["jobs_per_s"] > 0 for row in rows.values())


def test_engine_bench_smoke_on_a_tiny_flow_family(tmp_path: Path) -> None:
    """``--arch qwenimage --tiny``: the demo Qwen-Image, raw diffusers with the engine's own arguments
    (its true CFG against " "), batches through the shared loop's Qwen-Image hooks."""
    module = load_bench("engine")
    out = tmp_path / "engine.json"
    argv = ["--arch", "qwenimage", "--tiny", "--steps", "2", "--rounds", "1", "--batches", "1", "2"]
    assert module.main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert (result["arch"], result["size"], result["loop_steps"]) == ("qwenimage", 64, 2)
    assert {(row["mode"], row["batch"]) for row in result["throughput"]} == {("direct", 1), ("eager", 1), ("eager", 2)}


def test_previews_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "previews.json"
    argv = ["--arch", "demo", "--size", "64", "--steps", "4", "--rounds", "1", "--methods", "latent2rgb", "taesd"]
    assert load_bench("previews").main([*argv, "--every", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [row["config"] for row in result["runs"]] == ["off", "latent2rgb every=1", "taesd every=1"]
    off, *with_previews = result["runs"]
    assert off["previews_per_run"] == 0
    for row in with_previews:
        # 4 steps shown (PNDM's fifth loop call, its warm-up, is no step: issue #20); no preview on the last one.
        assert row["previews_per_run"] + row["skipped_per_run"] == 3
        assert row["decode_ms_per_preview"] > 0
    assert set(result["bytes_per_preview"]) == {"latent2rgb", "taesd"}
    for formats in result["bytes_per_preview"].values():
        assert set(formats) == {"jpeg", "webp", "png"} and all(f["bytes"] > 0 for f in formats.values())


def test_service_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "service.json"
    argv = ["--size", "64", "--steps", "2", "--rounds", "1", "--warmups", "0", "--watchers", "20",
            "--client-processes", "2"]
    assert load_bench("service").main([*argv, "--watch-steps", "3", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    compare = result["http_vs_direct"]
    assert len(compare["direct_seconds"]) == len(compare["http_seconds"]) == 1 and compare["ratio"] > 0
    watchers = result["watchers"]
    assert watchers["job_status"] == "completed" and watchers["watcher_errors"] == 0
    assert watchers["complete_then_end"] == 20 and watchers["health_samples"] > 0
    assert len(watchers["terminal_event_ids"]) == 1  # every watcher saw the same complete event
    # The floor: the same clients read a frame of the job's image size from the bare server.
    assert watchers["image_base64_chars"] > 0
    assert result["floor"]["complete_then_end"] == 20 and result["floor"]["watcher_errors"] == 0


def test_models_bench_smoke(demo_cache_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "models.json"
    argv = ["--cache-dir", str(demo_cache_dir), "--rounds", "1", "--steps", "2", "--json", str(out)]
    assert load_bench("models").main(argv) == 0
    result = json.loads(out.read_text())
    assert result["models"] == ["demo-sd15", "demo-sdxl"], result["models"]
    assert result["loras"] == ["demo-kohya", "demo-peft"]
    assert result["cold_load_s"] > 0 and result["s_per_step_unfused"] > 0
    assert result["fused_drift_max_pixel"] >= 0


@pytest.mark.parametrize(("kind", "models"), [("unet", ["demo-sd15", "demo-sdxl"]),
                                             ("flow", ["demo-flux1", "demo-zimage"])])
def test_models_soak_smoke(demo_cache_dir: Path, tmp_path: Path, kind: str, models: list[str]) -> None:
    out = tmp_path / "soak.json"
    # 10 jobs are all warm-up: the slope is computed over every sample and its limit is not the verdict here
    argv = ["--cache-dir", str(demo_cache_dir), "--jobs", "10", "--every", "5", "--warmup", "0",
            "--max-slope-kb", "1e9", "--models", kind, "--json", str(out)]
    assert load_bench("soak_models").main(argv) == 0  # non-zero when a LoRA-free job's pixels drift
    result = json.loads(out.read_text())
    assert result["models"] == models and result["model_loads"] >= 1  # a model change evicted and reloaded
    assert [s["jobs"] for s in result["samples"]] == [0, 5, 10] and result["plain_jobs_drifted"] == 0
    assert math.isfinite(result["slope_kb_per_job"]) and result["warmup_jobs"] == 0


def test_upscaler_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "upscaler.json"
    argv = ["--archs", "demo", "--sizes", "16", "--rounds", "1", "--json", str(out)]
    assert load_bench("upscaler").main(argv) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(row["arch"], row["input"], row["output"]) for row in rows] == [("demo", 16, 64)]
    assert rows[0]["seconds_median"] > 0 and rows[0]["parameters"] > 0


def test_real_size_flow_configs_are_the_published_shapes_diffusers_carries() -> None:
    """``bench/engine.py --arch`` times the real sizes: the configs in ``bench/flow_archs.py`` are checked
    against what diffusers 0.42 itself carries (no download here): its transformer classes' defaults are
    FLUX.1's, Z-Image-Turbo's and Qwen-Image's published configs (FLUX.1 dev adds the guidance input), and
    FLUX.2 klein's text width is the three Qwen3 layers its pipeline stacks (``text_encoder_out_layers``).
    SD 3.5 large has no such reference in the package (SD3's defaults are medium's)."""
    import inspect

    import diffusers

    from bench.flow_archs import (
        FLUX1_DEV_TRANSFORMER,
        FLUX2_KLEIN_TRANSFORMER,
        QWEN3_4B,
        QWENIMAGE_TRANSFORMER,
        ZIMAGE_TURBO_TRANSFORMER,
    )

    def defaults(cls: Any) -> dict[str, Any]:
        parameters = inspect.signature(cls.__init__).parameters.values()
        return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}

    def normal(config: dict[str, Any]) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}

    for ours, cls, differs in [(FLUX1_DEV_TRANSFORMER, diffusers.FluxTransformer2DModel, {"guidance_embeds": True}),
                               (ZIMAGE_TURBO_TRANSFORMER, diffusers.ZImageTransformer2DModel, {}),
                               (QWENIMAGE_TRANSFORMER, diffusers.QwenImageTransformer2DModel, {})]:
        published = normal(defaults(cls))
        assert {k: published[k] for k in ours} == normal({**ours, **{k: published[k] for k in differs}}), cls
        assert all(ours[k] == v for k, v in differs.items())
    layers = inspect.signature(diffusers.Flux2KleinPipeline.encode_prompt).parameters["text_encoder_out_layers"]
    assert FLUX2_KLEIN_TRANSFORMER["joint_attention_dim"] == len(layers.default) * QWEN3_4B["hidden_size"]
    assert max(layers.default) <= QWEN3_4B["num_hidden_layers"]
    dev = defaults(diffusers.Flux2Transformer2DModel)  # FLUX.2 dev: klein shares all but the sizes
    for key in ("patch_size", "in_channels", "attention_head_dim", "timestep_guidance_channels"):
        assert FLUX2_KLEIN_TRANSFORMER[key] == dev[key], key
    assert tuple(FLUX2_KLEIN_TRANSFORMER["axes_dims_rope"]) == tuple(dev["axes_dims_rope"])

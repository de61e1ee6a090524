"""``--compile`` for a flow-matching model (the demo FLUX.1): its repeated transformer blocks run
compiled, warmed at load, within 40 dB of eager; a job with a LoRA and a switch to another model of the
same architecture (the bundle's transformer file) compile nothing new (dynamo raises on a recompile
here); SD 3.5's transformer, which declares no repeated blocks, gets its block class named.

One compiled engine for the module: the first compile of the demo FLUX.1 blocks takes 15-90 s on two
CPU cores (less with Inductor's cache warm)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from sdworker.domain.request import GenerationRequest, LoraRef
from sdworker.engine.block_compile import CompiledBlocks, repeated_block_names
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.settings import Settings

JOB: dict[str, Any] = {"width": 64, "height": 64, "num_inference_steps": 3, "seed": 9}


def psnr(a: Any, b: Any) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def engine(cache_dir: Path, **settings: Any) -> DiffusersEngine:
    return DiffusersEngine(Settings(model="demo", cache_dir=cache_dir, device="cpu", max_loaded_models=2,
                                    default_model="demo-flux1", **settings))


@pytest.fixture(scope="module")
def compiled(demo_cache_dir: Path) -> DiffusersEngine:
    return engine(demo_cache_dir, compile=True, compile_sizes=("64x64",))


@contextlib.contextmanager
def no_recompiles() -> Iterator[None]:
    """A recompile raises instead of compiling (and is counted as a new graph besides)."""
    torch._dynamo.config.error_on_recompile = True
    try:
        yield
    finally:
        torch._dynamo.config.error_on_recompile = False


def run(on: DiffusersEngine, model: str = "demo-flux1", **extra: Any) -> Any:
    return on.generate(GenerationRequest("a photo of a cat", model=model, **JOB, **extra)).images[0]


def blocks(on: DiffusersEngine, model: str = "demo-flux1") -> CompiledBlocks:
    handle = on._slot(on.library.model(model), None).compiled
    assert isinstance(handle, CompiledBlocks)
    return handle


def test_compiled_blocks_equal_eager_within_40_db(compiled: DiffusersEngine, demo_cache_dir: Path) -> None:
    handle = blocks(compiled)  # loads and warms
    assert handle.classes == ("FluxTransformerBlock", "FluxSingleTransformerBlock") and handle.warm_seconds > 0
    before = (handle.compiled_calls, handle.eager_calls)
    image = run(compiled)
    assert handle.eager_calls == before[1] and handle.compiled_calls - before[0] == 3 * len(handle.blocks)
    assert psnr(image, run(engine(demo_cache_dir))) >= 40.0


def test_no_recompile_across_a_lora_and_a_model_switch(compiled: DiffusersEngine) -> None:
    handle = blocks(compiled)  # loaded and warmed (its warm-up compiles what it needs)
    with no_recompiles():
        no_recompile_across_a_lora_and_a_model_switch(compiled, handle)


def no_recompile_across_a_lora_and_a_model_switch(compiled: DiffusersEngine, handle: CompiledBlocks) -> None:
    graphs = counters["stats"]["unique_graphs"]
    plain = run(compiled)
    calls = handle.compiled_calls
    with_lora = run(compiled, loras=(LoraRef("demo-flux1-kohya"),))
    assert handle.compiled_calls == calls  # an active unfused LoRA: the blocks ran eager
    assert np.abs(np.asarray(with_lora, dtype=int) - np.asarray(plain, dtype=int)).max() > 10
    assert np.array_equal(np.asarray(run(compiled)), np.asarray(plain))  # the graph again, as before the LoRA
    assert handle.compiled_calls > calls
    other = blocks(compiled, "demo-flux1-transformer")  # the same architecture from another file: warm-up reuses
    run(compiled, "demo-flux1-transformer")
    assert other.compiled_calls > 0 and other.eager_calls == 0
    assert counters["stats"]["unique_graphs"] == graphs


def test_sd3_blocks_are_named_for_it(demo_cache_dir: Path) -> None:
    from diffusers import SD3Transformer2DModel

    from sdworker.engine.demo_model import DEMO_VERSION

    folder = demo_cache_dir / DEMO_VERSION / "models" / "demo-sd3" / "transformer"
    transformer = SD3Transformer2DModel.from_pretrained(folder)
    assert not getattr(transformer, "_repeated_blocks", None)  # diffusers still names none
    assert repeated_block_names(transformer) == ("JointTransformerBlock",)

"""``--quantize`` and GGUF files on the CPU, against the unquantised demo FLUX.1 model: int8 weight-only
(torchao) stays within 30 dB PSNR of it with at most 0.35x of its fp32 transformer weight bytes; the
bundle's GGUF transformer (Q8_0) loads through the library and generates; what needs CUDA is refused at
start in one line with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sdworker.domain.request import GenerationRequest
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.engine.quantize import weight_bytes
from sdworker.settings import Settings

JOB: dict[str, Any] = {"width": 64, "height": 64, "num_inference_steps": 4, "seed": 11}


def psnr(a: Any, b: Any) -> float:
    x, y = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def engine(cache_dir: Path, **settings: Any) -> DiffusersEngine:
    return DiffusersEngine(Settings(model="demo", cache_dir=cache_dir, device="cpu", max_loaded_models=2, **settings))


@pytest.fixture(scope="module")
def plain(demo_cache_dir: Path) -> DiffusersEngine:
    return engine(demo_cache_dir)


def run(on: DiffusersEngine, model: str) -> Any:
    return on.generate(GenerationRequest("a photo of a cat", model=model, **JOB)).images[0]


def transformer(on: DiffusersEngine, model: str) -> Any:
    return on._slot(on.library.model(model), None).model.pipe.transformer


def test_int8_is_within_30_db_with_at_most_035x_the_weight_bytes(plain: DiffusersEngine, demo_cache_dir: Path) -> None:
    int8 = engine(demo_cache_dir, quantize="int8")
    image = run(int8, "demo-flux1")
    assert psnr(image, run(plain, "demo-flux1")) >= 30.0
    quantised, full = transformer(int8, "demo-flux1"), transformer(plain, "demo-flux1")
    assert type(quantised.transformer_blocks[0].attn.to_q.weight).__name__ == "Int8Tensor"
    assert weight_bytes(quantised) <= 0.35 * weight_bytes(full)
    encoder = int8._slot(int8.library.model("demo-flux1"), None).model.pipe.text_encoder_2  # T5: the large one
    assert type(encoder.encoder.block[0].layer[0].SelfAttention.q.weight).__name__ == "Int8Tensor"


def test_the_bundles_gguf_transformer_generates(plain: DiffusersEngine) -> None:
    entry = plain.library.model("demo-flux1-q8")
    assert (entry.family, entry.transformer_only, entry.source.location.endswith(".gguf")) == ("flux1", True, True)
    image = run(plain, "demo-flux1-q8")
    weights = transformer(plain, "demo-flux1-q8").transformer_blocks[0].attn.to_q.weight
    assert type(weights).__name__ == "GGUFParameter" and weights.quant_type.name == "Q8_0"
    assert psnr(image, run(plain, "demo-flux1")) >= 30.0  # Q8_0 of the same weights: close, not equal
    assert np.asarray(image).std() > 1  # a picture, not a flat field


@pytest.mark.parametrize("kind", ["nf4", "fp8"])
def test_cuda_only_kinds_are_refused_on_the_cpu_at_start(kind: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sdworker", "serve", "--quantize", kind, "--device", "cpu", "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and f"'{kind}'" in lines[0] and "CUDA" in lines[0], done.stderr

"""``--compile``: the compiled UNet matches eager, runs only for warmed shapes, and never recompiles
for a second job, a LoRA, another scheduler or a model switch.

One compiled engine for the whole module (the first compile of the demo UNet takes 1-2 minutes on two
CPU cores); its two models are the demo SD 1.x model under two names, so the second one exercises a
model switch, which reuses the first one's compiled code instead of compiling again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from sdworker.domain.request import GenerationRequest, LoraRef
from sdworker.engine.compile import CompiledUnet, batch_buckets, compile_cache_dir, compile_unet, shadow_module
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.settings import Settings

from .helpers import pixels

BASE: dict[str, Any] = {"num_inference_steps": 3, "width": 64, "height": 64, "seed": 5, "scheduler": "euler"}
PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def models_dir(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("compile-models")
    for name in ("first", "second"):
        (folder / name).symlink_to(demo_bundle / "models" / "demo-sd15")
    return folder


def settings(models_dir: Path, demo_bundle: Path, cache_dir: Path, **kwargs: Any) -> Settings:
    return Settings(models_dir=str(models_dir), lora_dir=str(demo_bundle / "loras"), cache_dir=cache_dir,
                    device="cpu", default_model="first", max_loaded_models=2, **kwargs)


@pytest.fixture(scope="module")
def compiled(models_dir: Path, demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> DiffusersEngine:
    cache_dir = tmp_path_factory.mktemp("compile-cache")
    engine = DiffusersEngine(settings(models_dir, demo_bundle, cache_dir, compile=True, compile_sizes=("64x64",)))
    engine.load()
    return engine


@pytest.fixture(scope="module")
def eager(models_dir: Path, demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> DiffusersEngine:
    return DiffusersEngine(settings(models_dir, demo_bundle, tmp_path_factory.mktemp("eager-cache")))


def handle(engine: DiffusersEngine, name: str = "first") -> CompiledUnet:
    compiled = engine._slots[name].compiled
    assert compiled is not None
    return compiled


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def generate(engine: DiffusersEngine, **kwargs: Any) -> np.ndarray:
    return pixels(engine.generate(GenerationRequest(PROMPT, **{**BASE, **kwargs})).images[0])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)


def test_load_compiles_each_listed_size_and_bucket_and_caches_on_disk(compiled: DiffusersEngine) -> None:
    first = handle(compiled)
    assert first.warmed == {(2, 8, 8, 77)}  # 64x64 px = 8x8 latents, guidance's 2 rows, 77 prompt tokens
    assert graphs() >= 1 and first.warm_seconds > 0
    unet = compiled.model.text_to_image.unet
    assert type(unet).__name__ == "UNet2DConditionModel" and unet.forward is first  # pipelines see the real UNet
    assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert any((compiled.settings.cache_dir / "torch-compile").iterdir())


def test_compiled_output_matches_eager_within_40_db(compiled: DiffusersEngine, eager: DiffusersEngine) -> None:
    first, before = handle(compiled), graphs()
    calls = first.compiled_calls
    ours, reference = generate(compiled), generate(eager)
    assert first.compiled_calls == calls + BASE["num_inference_steps"]
    assert graphs() == before
    assert psnr(ours, reference) >= 40.0


def test_a_size_not_listed_and_more_images_run_eager_without_compiling(compiled: DiffusersEngine) -> None:
    first, before = handle(compiled), graphs()
    calls, eager_calls = first.compiled_calls, first.eager_calls
    generate(compiled, width=80, height=64)
    generate(compiled, num_images=2)  # 4 rows: above max_batch 1's only bucket
    assert first.compiled_calls == calls
    assert first.eager_calls == eager_calls + 2 * BASE["num_inference_steps"]
    assert graphs() == before


def test_loras_schedulers_and_model_switches_never_recompile(compiled: DiffusersEngine) -> None:
    before, traced = graphs(), counters["aot_autograd"]["total"]
    generate(compiled, model="second")  # loads the second model: same architecture, dynamo's code reused
    first, second = handle(compiled), handle(compiled, "second")
    plain = generate(compiled)
    calls = first.compiled_calls
    with_lora = generate(compiled, loras=(LoraRef("demo-peft", 0.8),))  # active, unfused: eager
    assert first.compiled_calls == calls and not np.array_equal(with_lora, plain)
    for _ in range(2):
        assert np.array_equal(generate(compiled), plain)  # LoRA off again: compiled, as before it
        generate(compiled, model="second", loras=(LoraRef("demo-kohya"),))
        generate(compiled, model="second", scheduler="ddim")  # integer timesteps
        generate(compiled, scheduler="pndm")
    assert first.compiled_calls > calls and second.compiled_calls > 0
    assert graphs() == before and counters["aot_autograd"]["total"] == traced


def test_another_model_of_the_architecture_reuses_the_graph_with_its_own_weights(compiled: DiffusersEngine) -> None:
    """Dynamo guards on the module's structure and config and passes the weights in as graph inputs, so
    a second model loaded the same way shares the first one's compiled code, with its own weights."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(Path(compiled.model.source.location) / "unet").eval()
    unet.to(memory_format=torch.channels_last)
    torch.manual_seed(99)
    with torch.no_grad():  # a "fine-tune" of the demo: same architecture and config, other weights
        for weight in unet.parameters():
            weight.add_(torch.randn_like(weight) * 0.05)
    eager_forward, before = unet.forward, graphs()
    other = compile_unet(unet, [(8, 8)])
    assert other is not None and graphs() == before
    sample, context = torch.randn(2, 4, 8, 8), torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        ours = unet(sample, torch.tensor(300), context).sample
        expected = eager_forward(sample, torch.tensor(300), context).sample
    assert other.compiled_calls == 1
    torch.testing.assert_close(ours, expected, rtol=1e-3, atol=1e-4)


def test_inference_mode_callers_run_the_same_graph(compiled: DiffusersEngine) -> None:
    """Dynamo guards on grad mode and on inference tensors' dispatch keys; the dispatcher hides both."""
    unet, first, before = compiled.model.text_to_image.unet, handle(compiled), graphs()
    calls = first.compiled_calls
    with torch.inference_mode():
        sample, context = torch.randn(2, 4, 8, 8), torch.randn(2, 77, unet.config.cross_attention_dim)
        out = unet(sample, torch.tensor(999), context, return_dict=False)[0]
    assert out.shape == sample.shape and first.compiled_calls == calls + 1 and graphs() == before


def test_fused_loras_run_compiled(
    compiled: DiffusersEngine, models_dir: Path, demo_bundle: Path, tmp_path: Path
) -> None:
    """With ``fuse_loras`` the active LoRA is in the shared weights themselves, so its jobs run the graph."""
    fused = DiffusersEngine(settings(models_dir, demo_bundle, compiled.settings.cache_dir, compile=True,
                                     compile_sizes=("64x64",)), fuse_loras=True)
    reference = DiffusersEngine(settings(models_dir, demo_bundle, tmp_path), fuse_loras=True)
    before, lora = graphs(), (LoraRef("demo-peft", 0.8),)
    ours = generate(fused, loras=lora)
    assert handle(fused).compiled_calls == BASE["num_inference_steps"] and handle(fused).eager_calls == 0
    assert psnr(ours, generate(reference, loras=lora)) >= 40.0 and graphs() == before


def test_padded_rows_equal_unpadded_rows(demo_bundle: Path) -> None:
    """Padding to a bucket and slicing back leaves each row's result alone (checked without compiling:
    the dispatcher's padding runs the same with the eager forward in place of the compiled one)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(demo_bundle / "models" / "demo-sd15" / "unet").eval()
    dispatcher = CompiledUnet(eager=unet.forward, compiled=shadow_module(unet).forward, buckets=(4,),
                              added=(), dtype=unet.dtype, warmed={(4, 8, 8, 77)})
    sample, context = torch.randn(2, 4, 8, 8), torch.randn(2, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        padded = dispatcher(sample, torch.tensor(400), context, return_dict=False)[0]
        plain = unet.forward(sample, torch.tensor(400), context, return_dict=False)[0]
    assert dispatcher.compiled_calls == 1 and padded.shape == plain.shape
    torch.testing.assert_close(padded, plain, rtol=1e-4, atol=1e-5)


def test_a_failing_compile_leaves_the_unet_eager(demo_bundle: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import UNet2DConditionModel

    def broken(fn: Any, **options: Any) -> Any:
        def run(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken)
    unet = UNet2DConditionModel.from_pretrained(demo_bundle / "models" / "demo-sd15" / "unet").eval()
    assert compile_unet(unet, [(8, 8)]) is None
    assert "forward" not in vars(unet)  # the class's own forward, untouched


def test_buckets_and_cache_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert batch_buckets(1) == (2,) and batch_buckets(3) == (2, 4, 8) and batch_buckets(8) == (2, 4, 8, 16)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", "elsewhere")  # restored after the test
    assert compile_cache_dir(tmp_path) == tmp_path / "torch-compile"
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    assert cache_dir() == str((tmp_path / "torch-compile").resolve())

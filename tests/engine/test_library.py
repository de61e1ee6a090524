"""The model library: what a models folder offers, names, families, hashes; switching models per job."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

from sdworker.domain.families import family_facts
from sdworker.domain.request import GenerationRequest
from sdworker.engine.demo_model import CHECKPOINT_NAME
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.engine.library import ModelLibrary
from sdworker.errors import ModelError, ModelNotFound
from sdworker.settings import Settings

from .helpers import pixels

BASE: dict[str, Any] = {"num_inference_steps": 2, "width": 64, "height": 64, "seed": 8}


@pytest.fixture
def models_dir(demo_bundle: Path, tmp_path: Path) -> Path:
    """A models folder as users keep one: a diffusers folder, a nested one, a single file, junk."""
    root = tmp_path / "models"
    (root / "xl").mkdir(parents=True)
    (root / "sd15-folder").symlink_to(demo_bundle / "models" / "demo-sd15")
    (root / "xl" / "tiny-xl").symlink_to(demo_bundle / "models" / "demo-sdxl")
    shutil.copy(demo_bundle / "models" / "demo-sd15" / CHECKPOINT_NAME, root / "dreamshaper.safetensors")
    (root / "old.ckpt").write_bytes(b"pickle")
    (root / "notes.txt").write_text("hi")
    return root


def test_a_models_folder_is_scanned_by_name_family_and_kind(models_dir: Path, tmp_path: Path) -> None:
    library = ModelLibrary(Settings(models_dir=str(models_dir), cache_dir=tmp_path))
    found = {e.name: (e.family, e.kind, e.native_size) for e in library.models()}
    # A single file's size comes from its family (512 for SD 1.x); a folder's from its own config (64).
    assert found == {"dreamshaper": ("sd1", "file", 512), "sd15-folder": ("sd1", "folder", 64),
                     "xl/tiny-xl": ("sdxl", "folder", 64)}
    assert library.default_name == "dreamshaper"  # the first found, without --default-model
    assert ModelLibrary(Settings(models_dir=str(models_dir), default_model="xl/tiny-xl")).default_name == "xl/tiny-xl"
    with pytest.raises(ModelNotFound) as info:
        library.model("nope")
    assert (info.value.field, info.value.http_status) == ("model", 404)


def test_an_unknown_name_rescans_and_refresh_finds_new_models(models_dir: Path, demo_bundle: Path) -> None:
    library = ModelLibrary(Settings(models_dir=str(models_dir)))
    (models_dir / "later").symlink_to(demo_bundle / "models" / "demo-sdxl")
    assert library.model("later").family == "sdxl"  # not known at the scan: asked for, rescanned, found
    (models_dir / "later").unlink()
    library.refresh()
    assert "later" not in {e.name for e in library.models()}


def test_switching_models_gives_each_its_own_pixels(demo_bundle: Path, demo_cache_dir: Path, tmp_path: Path) -> None:
    # The bundle's first name is demo-flux1 now: name the default the test means.
    settings = Settings(models_dir=str(demo_bundle / "models"), cache_dir=tmp_path, device="cpu", max_loaded_models=1,
                        default_model="demo-sd15")
    engine = DiffusersEngine(settings)
    engine.load()
    events: list[tuple[str, str]] = []
    results = []
    for model in ("demo-sdxl", None, "demo-sdxl", "demo-sd15"):
        result = engine.generate(GenerationRequest("a cat", model=model, **BASE),
                                 on_model_load=lambda name, phase, seconds: events.append((name, phase)))
        results.append(result)
    assert [r.model for r in results] == ["demo-sdxl", "demo-sd15", "demo-sdxl", "demo-sd15"]
    assert [r.family for r in results] == ["sdxl", "sd1", "sdxl", "sd1"]
    assert events == [(name, phase) for name in ("demo-sdxl", "demo-sd15") * 2 for phase in ("started", "finished")]
    listed = {m.name: m for m in engine.list_models()}
    assert listed["demo-sd15"].loaded and not listed["demo-sdxl"].loaded  # max_loaded_models = 1
    assert listed["demo-sd15"].is_default
    unet = demo_bundle / "models" / "demo-sdxl" / "unet" / "diffusion_pytorch_model.safetensors"
    assert listed["demo-sdxl"].sha256 == hashlib.sha256(unet.read_bytes()).hexdigest()
    assert results[0].model_hash == listed["demo-sdxl"].short_hash

    def own(cls: Any, folder: str) -> np.ndarray:
        pipe = cls.from_pretrained(demo_bundle / "models" / folder)
        pipe.set_progress_bar_config(disable=True)
        return pixels(pipe("a cat", num_inference_steps=2, width=64, height=64, guidance_scale=7.5,
                           generator=torch.Generator("cpu").manual_seed(8)).images[0])

    xl, sd15 = own(StableDiffusionXLPipeline, "demo-sdxl"), own(StableDiffusionPipeline, "demo-sd15")
    for i, (result, expected) in enumerate(zip(results, (xl, sd15, xl, sd15), strict=True)):
        assert np.array_equal(pixels(result.images[0]), expected), i


def test_two_models_stay_loaded_with_max_two(demo_bundle: Path, tmp_path: Path) -> None:
    settings = Settings(models_dir=str(demo_bundle / "models"), cache_dir=tmp_path, device="cpu", max_loaded_models=2)
    engine = DiffusersEngine(settings)
    events: list[str] = []
    for model in ("demo-sd15", "demo-sdxl", "demo-sd15", "demo-sdxl"):
        engine.generate(GenerationRequest("a cat", model=model, **BASE),
                        on_model_load=lambda name, phase, seconds: events.append(f"{name} {phase}"))
    assert events == ["demo-sd15 started", "demo-sd15 finished", "demo-sdxl started", "demo-sdxl finished"]
    assert {m.name for m in engine.list_models() if m.loaded} == {"demo-sd15", "demo-sdxl"}


def test_a_single_file_loads_offline_with_a_folder_of_its_family(models_dir: Path, tmp_path: Path) -> None:
    engine = DiffusersEngine(Settings(models_dir=str(models_dir), cache_dir=tmp_path, device="cpu"))
    result = engine.generate(GenerationRequest("a cat", model="dreamshaper", **BASE))
    assert (result.model, result.family) == ("dreamshaper", "sd1")
    digest = hashlib.sha256((models_dir / "dreamshaper.safetensors").read_bytes()).hexdigest()
    assert result.model_hash == digest[:10]
    # The hash is cached by path, size and mtime: a second engine lists it without loading anything.
    again = DiffusersEngine(Settings(models_dir=str(models_dir), cache_dir=tmp_path, device="cpu"))
    assert {m.name: m.sha256 for m in again.list_models()}["dreamshaper"] == digest


@pytest.mark.parametrize(
    ("key", "width", "family", "fmt"),
    [
        ("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight", 768, "sd1", "kohya"),
        ("unet.down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight", 1024, "sd2", "peft"),
        ("lora_unet_input_blocks_4_1_transformer_blocks_0_attn2_to_k.lora_down.weight", 2048, "sdxl", "kohya"),
    ],
)
def test_published_lora_layouts_tell_their_family(tmp_path: Path, key: str, width: int, family: str, fmt: str) -> None:
    from safetensors.torch import save_file

    from sdworker.engine.library import ModelEntry
    from sdworker.engine.models import ModelSource
    from sdworker.errors import LoraIncompatible

    (tmp_path / "loras").mkdir()
    save_file({key: torch.zeros(4, width)}, str(tmp_path / "loras" / "style.safetensors"))
    library = ModelLibrary(Settings(models_dir=str(tmp_path), lora_dir=str(tmp_path / "loras")))
    lora = library.lora("style.safetensors")
    assert (lora.name, lora.family, lora.format, lora.context_dim) == ("style", family, fmt, width)
    sd15 = ModelEntry("sd15", "sd1", "file", ModelSource("single_file", "x"), 512, 768, None)
    if family == "sd1":
        library.check_lora_fits(lora, sd15)
    else:
        with pytest.raises(LoraIncompatible):
            library.check_lora_fits(lora, sd15)


def test_previews_follow_the_family_of_the_model_that_runs(demo_bundle: Path, tmp_path: Path) -> None:
    settings = Settings(models_dir=str(demo_bundle / "models"), cache_dir=tmp_path, device="cpu")
    engine = DiffusersEngine(settings)
    seen: list[Any] = []
    for model in ("demo-sdxl", "demo-sd15"):
        result = engine.generate(GenerationRequest("a cat", model=model, **BASE),
                                 on_step=lambda view: seen.append(view.render_preview("auto", 32)))
        slot = engine._slot(engine.library.model(model), None)
        coefficients = family_facts(result.family).latent.coefficients
        assert slot.decoders["latent2rgb"].table == coefficients  # type: ignore[attr-defined]
        assert "taesd" in slot.decoders  # each demo folder ships its own taesd/
    assert all(p is not None and p.method == "taesd" for p in seen)


def _pair(module: str, rows: int, columns: int, down: str = "lora_down", up: str = "lora_up") -> dict[str, Any]:
    return {f"{module}.{down}.weight": {"shape": [4, columns]}, f"{module}.{up}.weight": {"shape": [rows, 4]}}


@pytest.mark.parametrize(
    ("header", "family"),
    [
        # BFL/kohya names are FLUX.1's and FLUX.2's alike: the MLP widths tell (FLUX.1 4x, FLUX.2 SwiGLU 3x)
        (_pair("lora_unet_single_blocks_0_linear2", 3072, 5 * 3072), "flux1"),
        (_pair("lora_unet_single_blocks_0_linear2", 3072, 4 * 3072), "flux2"),
        (_pair("diffusion_model.single_blocks.0.linear1", 9 * 3072, 3072, "lora_A", "lora_B"), "flux2"),
        (_pair("diffusion_model.double_blocks.0.img_mlp.0", 4 * 3072, 3072, "lora_A", "lora_B"), "flux1"),
        (_pair("diffusion_model.double_blocks.0.img_attn.qkv", 3 * 3072, 3072, "lora_A", "lora_B"), None),
        (_pair("transformer.single_transformer_blocks.0.attn.to_qkv_mlp_proj", 9, 1, "lora_A", "lora_B"), "flux2"),
        (_pair("transformer.single_transformer_blocks.0.attn.to_q", 8, 8, "lora_A", "lora_B"), "flux1"),
        (_pair("transformer.transformer_blocks.0.img_mlp.net.2", 8, 8, "lora_A", "lora_B"), "qwenimage"),
        (_pair("transformer.layers.0.attention.to_q", 8, 8, "lora_A", "lora_B"), "zimage"),
        (_pair("lora_unet_joint_blocks_0_x_block_attn_qkv", 8, 8), "sd3"),
        (_pair("transformer.transformer_blocks.0.attn.to_q", 8, 8, "lora_A", "lora_B"), None),
        (_pair("lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k", 320, 768), None),
    ],
)
def test_transformer_lora_families_from_key_names_and_widths(header: dict[str, Any], family: str | None) -> None:
    from sdworker.engine.lora_family import transformer_lora_family

    assert transformer_lora_family(header) == family


def test_a_broken_model_of_the_folder_is_listed_with_its_error_and_never_run(
    demo_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Unreadable files, and a folder whose parts are missing (it fails when loaded): a user sees both in
    # /v1/models with the reason instead of a model that vanished or one every job fails on unexplained.
    root = tmp_path / "models"
    root.mkdir()
    (root / "good").symlink_to(demo_bundle / "models" / "demo-sd15")
    (root / "garbage.safetensors").write_bytes(b"\x00" * 8 + b"not a header")
    (root / "parts-missing").mkdir()
    (root / "parts-missing" / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    engine = DiffusersEngine(Settings(models_dir=str(root), cache_dir=tmp_path, device="cpu", default_model="good"))
    with caplog.at_level("ERROR"):
        engine.load()
        listed = {m.name: m.error for m in engine.list_models()}
        assert listed["good"] is None and listed["parts-missing"] is None  # not known to be broken yet
        assert listed["garbage"] is not None and "not a readable model" in listed["garbage"]
        with pytest.raises(ModelError) as unreadable:
            engine.validate_request(GenerationRequest(prompt="x", model="garbage", **BASE))
        assert unreadable.value.field == "model" and unreadable.value.http_status == 400
        with pytest.raises(ModelError):
            engine.generate(GenerationRequest(prompt="x", model="parts-missing", **BASE))
        failed = {m.name: m.error for m in engine.list_models()}["parts-missing"]
        assert failed is not None and "cannot load it" in failed
    assert any("garbage" in r.getMessage() for r in caplog.records)
    assert any("parts-missing" in r.getMessage() for r in caplog.records)
    engine.library.refresh()  # files may have been fixed: the failed one gets another try
    assert {m.name: m.error for m in engine.list_models()}["parts-missing"] is None

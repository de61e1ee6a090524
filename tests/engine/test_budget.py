"""The byte budget and shared parts on the real engine with the demo models: a budget smaller than two
models evicts the least recently used by bytes and reloads it on demand with the same pixels; two models
whose text encoder and VAE files are identical load them once and keep them while either is loaded."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

from sdworker.domain.request import GenerationRequest, LoraRef
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.errors import ModelTooLarge
from sdworker.settings import Settings


def pixels(engine: DiffusersEngine, model: str, loras: tuple[LoraRef, ...] = ()) -> np.ndarray:
    request = GenerationRequest("a photo of a cat", model=model, loras=loras, num_inference_steps=2, width=64,
                                height=64, seed=5)
    return np.asarray(engine.generate(request).images[0])


@pytest.fixture(scope="module")
def two_models(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """demo-sd15 and demo-sdxl alone in a models folder (links: nothing copied)."""
    folder = tmp_path_factory.mktemp("models")
    for name in ("demo-sd15", "demo-sdxl"):
        (folder / name).symlink_to(demo_bundle / "models" / name)
    return folder


def test_a_budget_below_two_models_evicts_the_least_recently_used_and_reloads_it(two_models: Path,
                                                                                 tmp_path: Path) -> None:
    probe = DiffusersEngine(Settings(models_dir=str(two_models), cache_dir=tmp_path, device="cpu"))
    sizes = {m.name: m.size_bytes for m in probe.list_models()}
    assert all(isinstance(size, int) and size > 1_000_000 for size in sizes.values()), sizes
    budget = max(sizes.values()) + min(sizes.values()) // 2  # either fits alone, not both
    engine = DiffusersEngine(Settings(models_dir=str(two_models), cache_dir=tmp_path, device="cpu",
                                      max_loaded_bytes=budget))
    first = pixels(engine, "demo-sd15")
    assert engine.loaded_bytes <= budget
    pixels(engine, "demo-sdxl")
    loaded = {m.name for m in engine.list_models() if m.loaded}
    assert loaded == {"demo-sdxl"}  # demo-sd15 left: both would be over the budget
    assert 0 < engine.loaded_bytes <= budget
    again = pixels(engine, "demo-sd15")  # loaded again on demand
    assert {m.name for m in engine.list_models() if m.loaded} == {"demo-sd15"}
    assert np.array_equal(first, again)

    roomy = DiffusersEngine(Settings(models_dir=str(two_models), cache_dir=tmp_path, device="cpu",
                                     max_loaded_bytes=sum(sizes.values()) * 2))
    pixels(roomy, "demo-sd15")
    pixels(roomy, "demo-sdxl")
    assert {m.name for m in roomy.list_models() if m.loaded} == {"demo-sd15", "demo-sdxl"}  # no count limit
    roomy.close()
    engine.close()


def test_a_model_bigger_than_the_budget_is_refused_before_loading(two_models: Path, tmp_path: Path) -> None:
    engine = DiffusersEngine(Settings(models_dir=str(two_models), cache_dir=tmp_path, device="cpu",
                                      max_loaded_bytes="7MiB"))
    with pytest.raises(ModelTooLarge) as caught:
        engine.validate_request(GenerationRequest("a cat", model="demo-sdxl"))
    assert caught.value.field == "model"
    size = next(m.size_bytes for m in engine.list_models() if m.name == "demo-sdxl")
    assert "'demo-sdxl'" in caught.value.message and str(size) in caught.value.message
    assert str(7 * 1024 * 1024) in caught.value.message
    engine.validate_request(GenerationRequest("a cat", model="demo-sd15"))  # 5.8 MB: fits
    assert engine.loaded_bytes == 0  # nothing was loaded to decide


@pytest.fixture(scope="module")
def twins(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """twin-a: demo-sd15; twin-b: a copy of it (its own files, same bytes) with a different UNet."""
    folder = tmp_path_factory.mktemp("twins")
    source = demo_bundle / "models" / "demo-sd15"
    for twin in ("twin-a", "twin-b"):
        shutil.copytree(source, folder / twin, ignore=shutil.ignore_patterns("demo.safetensors"))
    unet = folder / "twin-b" / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(unet))
    name = next(k for k in state if k.endswith("conv_in.weight"))
    state[name] = state[name] * 1.5
    save_file(state, str(unet))
    return folder


def test_two_models_with_identical_encoder_files_load_them_once(twins: Path, demo_bundle: Path,
                                                                 tmp_path: Path) -> None:
    settings = Settings(models_dir=str(twins), cache_dir=tmp_path, device="cpu", lora_dir=str(demo_bundle / "loras"))
    alone = DiffusersEngine(settings)
    b_alone = pixels(alone, "twin-b")
    alone.close()

    engine = DiffusersEngine(settings)
    a_plain = pixels(engine, "twin-a")
    a_lora = pixels(engine, "twin-a", (LoraRef("demo-peft", 0.9),))  # its adapters go into the shared encoder
    b_plain = pixels(engine, "twin-b")
    a_pipe, b_pipe = (engine._slots[name].model.pipe for name in ("twin-a", "twin-b"))
    assert a_pipe.text_encoder is b_pipe.text_encoder and a_pipe.vae is b_pipe.vae
    assert a_pipe.unet is not b_pipe.unet
    assert engine._pool.loads == 4  # twin-a: UNet, text encoder, VAE; twin-b: its UNet only
    sizes = {m.name: m.size_bytes for m in engine.list_models()}
    unet_b = sum(p.numel() * p.element_size() for p in b_pipe.unet.parameters())
    assert engine.loaded_bytes < (sizes["twin-a"] or 0) + (sizes["twin-b"] or 0)
    assert engine.loaded_bytes >= (sizes["twin-a"] or 0) * 0.9 + unet_b
    assert np.array_equal(b_plain, b_alone)  # twin-a's LoRA in the shared encoder does not act on twin-b
    assert not np.array_equal(a_plain, b_plain)
    assert np.array_equal(pixels(engine, "twin-a", (LoraRef("demo-peft", 0.9),)), a_lora)
    assert np.array_equal(pixels(engine, "twin-a"), a_plain)

    encoder = a_pipe.text_encoder
    engine._evict("twin-a")  # as the LRU would: the shared parts stay, twin-b still uses them
    assert engine._slots["twin-b"].model.pipe.text_encoder is encoder
    assert engine._pool.sharers("twin-b") == set()
    assert not getattr(encoder, "peft_config", None)  # twin-a's adapters left the shared encoder with it
    assert all(len(m.lora_A) == 0 for m in encoder.modules() if hasattr(m, "lora_A"))
    assert np.array_equal(pixels(engine, "twin-b"), b_alone)
    assert np.array_equal(pixels(engine, "twin-a"), a_plain)  # reloaded: reuses twin-b's encoder and VAE
    assert engine._pool.loads == 5
    engine.close()


def test_the_default_model_too_big_for_the_budget_fails_its_load_naming_it(two_models: Path, tmp_path: Path) -> None:
    engine = DiffusersEngine(Settings(models_dir=str(two_models), default_model="demo-sdxl", cache_dir=tmp_path,
                                      device="cpu", max_loaded_bytes="2MiB"))
    with pytest.raises(ModelTooLarge, match="demo-sdxl"):
        engine.load()


@pytest.fixture(scope="module")
def flux_twins(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """flux-a: demo-flux1; flux-b: a copy of it (its own files, same bytes) whose transformer differs, as
    two FLUX.1 fine-tunes do (the T5 and CLIP encoders and the VAE are the base model's)."""
    folder = tmp_path_factory.mktemp("flux-twins")
    for twin in ("flux-a", "flux-b"):
        shutil.copytree(demo_bundle / "models" / "demo-flux1", folder / twin)
    weights = folder / "flux-b" / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state["x_embedder.weight"] = state["x_embedder.weight"] * 1.5
    save_file(state, str(weights))
    return folder


def flux_pixels(engine: DiffusersEngine, model: str) -> np.ndarray:
    request = GenerationRequest("a photo of a cat", model=model, num_inference_steps=2, width=64, height=64, seed=5)
    return np.asarray(engine.generate(request).images[0])


def test_flux_fine_tunes_share_their_encoders_and_vae(flux_twins: Path, tmp_path: Path) -> None:
    settings = Settings(models_dir=str(flux_twins), cache_dir=tmp_path, device="cpu")
    alone = DiffusersEngine(settings)
    a_alone = flux_pixels(alone, "flux-a")
    alone.close()
    alone = DiffusersEngine(settings)
    b_alone = flux_pixels(alone, "flux-b")
    alone.close()

    engine = DiffusersEngine(settings)
    assert np.array_equal(flux_pixels(engine, "flux-a"), a_alone)
    assert np.array_equal(flux_pixels(engine, "flux-b"), b_alone)
    assert not np.array_equal(a_alone, b_alone)
    a_pipe, b_pipe = (engine._slots[name].model.pipe for name in ("flux-a", "flux-b"))
    shared = ("text_encoder", "text_encoder_2", "vae")
    assert all(getattr(a_pipe, part) is getattr(b_pipe, part) for part in shared)
    assert a_pipe.transformer is not b_pipe.transformer
    assert engine._pool.loads == 5  # flux-a: transformer, CLIP, T5, VAE; flux-b: its transformer only
    modules = {id(getattr(pipe, part)) for pipe in (a_pipe, b_pipe) for part in (*shared, "transformer")}
    assert len(modules) == 5
    sizes = {m.name: m.size_bytes or 0 for m in engine.list_models()}
    transformer_b = sum(p.numel() * p.element_size() for p in b_pipe.transformer.parameters())
    assert engine.loaded_bytes == pytest.approx(sizes["flux-a"] + transformer_b, rel=0.05)

    encoder, vae = a_pipe.text_encoder_2, a_pipe.vae
    engine._evict("flux-a")  # as the LRU would: flux-b still uses the shared parts, they stay
    assert engine._slots["flux-b"].model.pipe.text_encoder_2 is encoder
    assert engine._slots["flux-b"].model.pipe.vae is vae
    assert engine.loaded_bytes == pytest.approx(sizes["flux-b"], rel=0.05)
    assert np.array_equal(flux_pixels(engine, "flux-b"), b_alone)
    assert np.array_equal(flux_pixels(engine, "flux-a"), a_alone)  # reloaded: only its transformer is read
    assert engine._pool.loads == 6
    engine.close()
    assert engine.loaded_bytes == 0


@pytest.fixture(scope="module")
def pickled(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """demo-sdxl (a folder, sized from its headers) and demo-pickle.ckpt: demo-sd15's single-file
    checkpoint saved as a torch pickle, whose size nothing tells before it is loaded."""
    import torch

    folder = tmp_path_factory.mktemp("pickled")
    (folder / "demo-sdxl").symlink_to(demo_bundle / "models" / "demo-sdxl")
    state = load_file(str(demo_bundle / "models" / "demo-sd15" / "demo.safetensors"))
    torch.save({"state_dict": state}, folder / "demo-pickle.ckpt")
    return folder


def pickle_settings(pickled: Path, demo_bundle: Path, tmp_path: Path, budget: int) -> Settings:
    return Settings(models_dir=str(pickled), cache_dir=tmp_path, device="cpu", allow_unsafe_pickle=True,
                    model_config_dir=str(demo_bundle / "models" / "demo-sd15"), max_loaded_bytes=budget)


def test_a_pickle_is_measured_when_loaded_and_the_budget_holds_after(pickled: Path, demo_bundle: Path,
                                                                     tmp_path: Path) -> None:
    probe = DiffusersEngine(pickle_settings(pickled, demo_bundle, tmp_path, 10**12))
    sizes = {m.name: m.size_bytes for m in probe.list_models()}
    assert sizes["demo-pickle"] is None and (sizes["demo-sdxl"] or 0) > 1_000_000
    first = pixels(probe, "demo-pickle")
    measured = next(m.size_bytes for m in probe.list_models() if m.name == "demo-pickle")
    assert measured == probe.loaded_bytes and measured > 1_000_000  # measured from the loaded parameters
    probe.close()

    budget = (sizes["demo-sdxl"] or 0) + measured // 2  # either alone, not both
    engine = DiffusersEngine(pickle_settings(pickled, demo_bundle, tmp_path, budget))
    pixels(engine, "demo-sdxl")
    assert np.array_equal(pixels(engine, "demo-pickle"), first)  # loaded without room made: measured after
    assert {m.name for m in engine.list_models() if m.loaded} == {"demo-pickle"}  # demo-sdxl left for it
    assert engine.loaded_bytes == measured <= budget
    pixels(engine, "demo-sdxl")  # the size is known now: room is made before the load, as for any model
    assert {m.name for m in engine.list_models() if m.loaded} == {"demo-sdxl"}
    engine.close()


def test_a_pickle_too_big_for_the_budget_fails_its_first_job_and_is_refused_at_submit_after(
    pickled: Path, demo_bundle: Path, tmp_path: Path
) -> None:
    engine = DiffusersEngine(pickle_settings(pickled, demo_bundle, tmp_path, 2 * 1024 * 1024))
    engine.validate_request(GenerationRequest("a cat", model="demo-pickle"))  # unknown size: let through
    with pytest.raises(ModelTooLarge, match="'demo-pickle' needs") as caught:
        pixels(engine, "demo-pickle")
    assert caught.value.field == "model"
    assert engine.loaded_bytes == 0 and not any(m.loaded for m in engine.list_models())
    with pytest.raises(ModelTooLarge, match="'demo-pickle' needs"):  # now judged before loading
        engine.validate_request(GenerationRequest("a cat", model="demo-pickle"))
    engine.close()

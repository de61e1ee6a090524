"""LoRAs through the engine equal diffusers' own LoRA loader, pixel for pixel, and leave nothing behind."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline

from sdworker.domain.parameters import parameters_text
from sdworker.domain.request import GenerationRequest, LoraRef
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.errors import InvalidRequest, LoraIncompatible, LoraNotFound, UnsafeCheckpoint
from sdworker.imaging.metadata import parse_parameters

from .helpers import pixels

BASE: dict[str, Any] = {"num_inference_steps": 2, "width": 64, "height": 64, "seed": 21, "scheduler": "euler"}
PROMPT = "a photo of a cat"


@pytest.fixture(scope="module")
def reference(demo_bundle: Path) -> Any:
    """diffusers' SD 1.x pipeline with the demo LoRAs loaded by diffusers itself, from the files."""
    pipe = StableDiffusionPipeline.from_pretrained(demo_bundle / "models" / "demo-sd15", safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    for name in ("demo-peft", "demo-kohya"):
        pipe.load_lora_weights(str(demo_bundle / "loras"), weight_name=f"{name}.safetensors", adapter_name=name)
    return pipe


def run_reference(pipe: Any, adapters: list[tuple[str, float]], prompt: str = PROMPT) -> np.ndarray:
    from diffusers import EulerDiscreteScheduler

    if adapters:
        pipe.enable_lora()
        pipe.set_adapters([a for a, _ in adapters], adapter_weights=[w for _, w in adapters])
    else:
        pipe.disable_lora()
    original = pipe.scheduler
    pipe.scheduler = EulerDiscreteScheduler.from_config(original.config)
    try:
        out = pipe(prompt, num_inference_steps=2, width=64, height=64, generator=torch.Generator("cpu").manual_seed(21))
    finally:
        pipe.scheduler = original
    return pixels(out.images[0])


def generate(engine: DiffusersEngine, prompt: str = PROMPT, **kwargs: Any) -> np.ndarray:
    return pixels(engine.generate(GenerationRequest(prompt, **{**BASE, **kwargs})).images[0])


@pytest.mark.parametrize("name", ["demo-peft", "demo-kohya"])
def test_one_lora_equals_diffusers_set_adapters(demo_engine: DiffusersEngine, reference: Any, name: str) -> None:
    plain = generate(demo_engine)
    with_lora = generate(demo_engine, loras=(LoraRef(name, 0.7),))
    assert not np.array_equal(with_lora, plain)  # the demo LoRA really changes the image
    assert np.array_equal(with_lora, run_reference(reference, [(name, 0.7)]))


def test_two_loras_then_none_equals_a_fresh_worker(
    demo_engine: DiffusersEngine, reference: Any, reference_pipelines: dict[str, Any]
) -> None:
    two = generate(demo_engine, loras=(LoraRef("demo-peft", 0.6), LoraRef("demo-kohya.safetensors", -0.4)))
    assert np.array_equal(two, run_reference(reference, [("demo-peft", 0.6), ("demo-kohya", -0.4)]))
    after = generate(demo_engine)
    fresh = reference_pipelines["txt2img"]  # a pipeline that never saw a LoRA
    from diffusers import EulerDiscreteScheduler

    original = fresh.scheduler
    fresh.scheduler = EulerDiscreteScheduler.from_config(original.config)
    try:
        expected = fresh(PROMPT, num_inference_steps=2, width=64, height=64,
                         generator=torch.Generator("cpu").manual_seed(21)).images[0]
    finally:
        fresh.scheduler = original
    assert np.array_equal(after, pixels(expected))


def test_prompt_tags_equal_the_field_and_the_field_weight_wins(demo_engine: DiffusersEngine) -> None:
    by_field = generate(demo_engine, loras=(LoraRef("demo-peft", 0.5),))
    assert np.array_equal(generate(demo_engine, PROMPT + " <lora:demo-peft:0.5>"), by_field)
    # Both name it: 0.5 from the field, not 1.0 from the tag; the tag's text is gone from the prompt.
    assert np.array_equal(generate(demo_engine, PROMPT + " <lora:demo-peft:1>", loras=(LoraRef("demo-peft", 0.5),)),
                          by_field)


def test_the_png_text_names_the_model_hash_and_the_lora_hashes(demo_engine: DiffusersEngine, demo_bundle: Path) -> None:
    import hashlib

    request = GenerationRequest(PROMPT + " <lora:demo-kohya:0.5>", **BASE)
    result = demo_engine.generate(request)
    info = parse_parameters(parameters_text(request, result, 0, "demo"))
    unet = demo_bundle / "models" / "demo-sd15" / "unet" / "diffusion_pytorch_model.safetensors"
    assert info["Model"] == "demo-sd15"
    assert info["Model hash"] == hashlib.sha256(unet.read_bytes()).hexdigest()[:10]
    data = (demo_bundle / "loras" / "demo-kohya.safetensors").read_bytes()
    header = 8 + int.from_bytes(data[:8], "little")
    assert info["Lora hashes"] == f"demo-kohya: {hashlib.sha256(data[header:]).hexdigest()[:12]}"
    assert info["Prompt"] == PROMPT + " <lora:demo-kohya:0.5>"  # A1111 keeps the tag in the text


@pytest.mark.parametrize(
    ("name", "error"),
    [
        ("../models/demo-sd15/unet/diffusion_pytorch_model", InvalidRequest),
        ("/etc/passwd", InvalidRequest),
        ("C:\\loras\\x", InvalidRequest),
        ("nope", LoraNotFound),
        ("evil.pt", UnsafeCheckpoint),
        ("pickled", UnsafeCheckpoint),
        ("outside", InvalidRequest),
        ("notalora", InvalidRequest),
    ],
)
def test_bad_lora_names_are_4xx_naming_the_field(
    demo_bundle: Path, demo_cache_dir: Path, tmp_path: Path, name: str, error: type[Exception]
) -> None:
    from safetensors.torch import save_file

    from sdworker.settings import Settings

    loras = tmp_path / "loras"
    loras.mkdir()
    (loras / "pickled.ckpt").write_bytes(b"not loaded")
    save_file({"x": torch.zeros(1)}, str(loras / "notalora.safetensors"))
    os.symlink(demo_bundle / "loras" / "demo-peft.safetensors", loras / "outside.safetensors")
    engine = DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu", lora_dir=str(loras)))
    with pytest.raises(error) as info:
        engine.validate_request(GenerationRequest(PROMPT, loras=(LoraRef(name),), **BASE))
    assert info.value.field == "loras"  # type: ignore[attr-defined]
    assert 400 <= info.value.http_status < 500  # type: ignore[attr-defined]
    with pytest.raises(error) as tagged:
        engine.validate_request(GenerationRequest(f"{PROMPT} <lora:{name}:1>", **BASE))
    assert tagged.value.field == "prompt"  # type: ignore[attr-defined]


def test_a_lora_for_another_architecture_is_refused_before_anything_loads(demo_engine: DiffusersEngine) -> None:
    with pytest.raises(LoraIncompatible) as info:
        demo_engine.validate_request(GenerationRequest(PROMPT, model="demo-sdxl", loras=(LoraRef("demo-peft"),)))
    assert info.value.field == "loras" and "demo-sdxl" in info.value.message
    with pytest.raises(LoraIncompatible):
        demo_engine.validate_request(GenerationRequest(PROMPT, loras=(LoraRef("demo-xl-peft"),)))


def test_the_loras_are_listed_with_format_and_family(demo_engine: DiffusersEngine) -> None:
    listed = {lora.name: (lora.format, lora.family) for lora in demo_engine.list_loras()}
    assert listed == {"demo-kohya": ("kohya", None), "demo-peft": ("peft", None), "demo-xl-peft": ("peft", "sdxl"),
                      "demo-flux1-kohya": ("kohya", "flux1")}


def test_an_sdxl_lora_equals_diffusers_on_both_text_encoders(demo_bundle: Path, demo_cache_dir: Path) -> None:
    from diffusers import StableDiffusionXLPipeline

    from sdworker.settings import Settings

    engine = DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu"))
    request = GenerationRequest(PROMPT, model="demo-sdxl", loras=(LoraRef("demo-xl-peft", 0.9),), **BASE)
    ours = pixels(engine.generate(request).images[0])
    pipe = StableDiffusionXLPipeline.from_pretrained(demo_bundle / "models" / "demo-sdxl")
    pipe.set_progress_bar_config(disable=True)
    plain = pipe(PROMPT, num_inference_steps=2, width=64, height=64, guidance_scale=7.5,
                 generator=torch.Generator("cpu").manual_seed(21)).images[0]
    pipe.load_lora_weights(str(demo_bundle / "loras"), weight_name="demo-xl-peft.safetensors", adapter_name="x")
    pipe.set_adapters(["x"], adapter_weights=[0.9])
    assert pipe.text_encoder_2.peft_config  # the LoRA reached the second text encoder too
    expected = pipe(PROMPT, num_inference_steps=2, width=64, height=64, guidance_scale=7.5,
                    generator=torch.Generator("cpu").manual_seed(21)).images[0]
    assert np.array_equal(ours, pixels(expected)) and not np.array_equal(ours, pixels(plain))
    after = pixels(engine.generate(GenerationRequest(PROMPT, model="demo-sdxl", **BASE)).images[0])
    assert np.array_equal(after, pixels(plain))


def test_submit_time_checks_name_their_fields(demo_engine: DiffusersEngine) -> None:
    from sdworker.errors import ModelNotFound

    with pytest.raises(ModelNotFound) as missing:
        demo_engine.validate_request(GenerationRequest(PROMPT, model="nope"))
    assert (missing.value.field, missing.value.http_status) == ("model", 404)
    with pytest.raises(InvalidRequest) as skip:
        demo_engine.validate_request(GenerationRequest(PROMPT, clip_skip=0))
    assert skip.value.field == "clip_skip"
    with pytest.raises(InvalidRequest) as weight:
        demo_engine.validate_request(GenerationRequest(PROMPT, loras=(LoraRef("demo-peft", 50.0),)))
    assert weight.value.field == "loras"
    demo_engine.validate_request(GenerationRequest(PROMPT + " <lora:demo-kohya:0.3>", model="demo-sd15",
                                                   loras=(LoraRef("demo-peft.safetensors", 0.5),)))

"""A1111 ``parameters`` text: the exact format of the issue, and a lossless round trip."""

from __future__ import annotations

import pytest

from sdworker.domain.hires import HiresFix
from sdworker.domain.parameters import model_label, parameters_text
from sdworker.domain.request import ControlUnit, GenerationRequest, InputImage, Operation
from sdworker.domain.result import GenerationResult
from sdworker.imaging.metadata import ImageParameters, format_parameters, parse_parameters


def result(scheduler: str, seeds: tuple[int, ...] = (1234,)) -> GenerationResult:
    return GenerationResult(images=(), seeds=seeds, width=64, height=64, scheduler=scheduler, steps_run=8,
                            seconds=1.0)


def test_the_issue_example_exactly() -> None:
    request = GenerationRequest("a photo of a cat", negative_prompt="blurry", num_inference_steps=8)
    assert parameters_text(request, result("euler_a"), 0, "demo") == (
        "a photo of a cat\nNegative prompt: blurry\n"
        "Steps: 8, Sampler: Euler a, CFG scale: 7.5, Seed: 1234, Size: 64x64, Model: demo"
    )


def test_no_negative_line_without_a_negative_prompt_and_strength_for_img2img() -> None:
    request = GenerationRequest("a cat", operation=Operation.IMAGE_TO_IMAGE, num_inference_steps=8, strength=0.8,
                                guidance_scale=7.0)
    text = parameters_text(request, result("dpmpp_2m_karras", (5, 6)), 1, "/models/v1-5-pruned.safetensors")
    assert text == (
        "a cat\nSteps: 8, Sampler: DPM++ 2M Karras, Schedule type: Karras, CFG scale: 7, Seed: 6, Size: 64x64, "
        "Model: v1-5-pruned, Denoising strength: 0.8"
    )


def test_hires_fix_as_a1111_writes_it() -> None:
    hires = HiresFix(scale=2.0, steps=10, strength=0.55, negative_prompt="ugly")
    request = GenerationRequest("a cat", num_inference_steps=8, guidance_scale=7.0, width=64, height=64, hires=hires)
    done = GenerationResult(images=(), seeds=(3,), width=128, height=128, scheduler="euler", steps_run=13,
                            seconds=1.0, first_pass_size=(64, 64))
    assert parameters_text(request, done, 0, "demo") == (
        "a cat\nSteps: 8, Sampler: Euler, CFG scale: 7, Seed: 3, Size: 64x64, Model: demo, Denoising strength: 0.55, "
        "Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Hires negative prompt: ugly"
    )
    resized = GenerationRequest("a cat", width=64, height=64, hires=HiresFix(resize_width=100, upscaler="Lanczos"))
    parsed = parse_parameters(parameters_text(resized, done, 0, "demo"))
    assert (parsed["Hires resize"], parsed["Hires upscaler"], "Hires steps" in parsed) == ("100x0", "Lanczos", False)


def test_controlnet_units_as_the_extension_writes_them() -> None:
    units = (ControlUnit("demo-controlnet", InputImage(b"", "x"), 0.8, 0.0, 0.5, "canny", 50, 150),
             ControlUnit("demo-controlnet", InputImage(b"", "y"), start=0.25))
    request = GenerationRequest("a cat", num_inference_steps=8, guidance_scale=7.0, controlnet=units)
    text = parameters_text(request, result("euler"), 0, "demo")
    parsed = parse_parameters(text)
    assert parsed["ControlNet 0"] == ("Module: canny, Model: demo-controlnet, Weight: 0.8, Threshold A: 50, "
                                      "Threshold B: 150, Guidance Start: 0, Guidance End: 0.5")
    assert parsed["ControlNet 1"] == ("Module: none, Model: demo-controlnet, Weight: 1, Guidance Start: 0.25, "
                                      "Guidance End: 1")
    assert 'ControlNet 0: "Module: canny' in text  # quoted, as A1111 writes a value with commas


@pytest.mark.parametrize(
    "params",
    [
        ImageParameters("a cat", "", 20, "Euler a", 7.5, 1, 512, 512, "demo"),
        ImageParameters("a cat, sitting: on a mat\nsecond line", "ugly, blurry\ntwo lines", 30, "DPM++ 2M Karras",
                        5.5, 4294967295, 768, 512, 'my "best", model', "Karras", 0.35),
        ImageParameters("", "", 1, "PLMS", 0.0, 0, 8, 8, "owner/name"),
    ],
)
def test_round_trip(params: ImageParameters) -> None:
    parsed = parse_parameters(format_parameters(params))
    assert parsed["Prompt"] == params.prompt
    assert parsed["Negative prompt"] == params.negative_prompt
    assert int(parsed["Steps"]) == params.steps
    assert parsed["Sampler"] == params.sampler
    assert parsed.get("Schedule type") == params.schedule_type
    assert float(parsed["CFG scale"]) == params.cfg_scale
    assert int(parsed["Seed"]) == params.seed
    assert parsed["Size"] == f"{params.width}x{params.height}"
    assert parsed["Model"] == params.model
    strength = parsed.get("Denoising strength")
    assert (None if strength is None else float(strength)) == params.denoising_strength


def test_parses_a1111s_own_text() -> None:
    """A line as A1111 1.10 writes it (with keys we do not write ourselves)."""
    text = (
        "masterpiece, a castle\nNegative prompt: lowres\n"
        'Steps: 25, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 42, Size: 512x768, '
        'Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Lora hashes: "a: 1, b: 2", Version: v1.10.1'
    )
    parsed = parse_parameters(text)
    assert parsed["Prompt"] == "masterpiece, a castle"
    assert parsed["Negative prompt"] == "lowres"
    assert parsed["Lora hashes"] == "a: 1, b: 2"
    assert parsed["Version"] == "v1.10.1"
    assert parsed["Size"] == "512x768"


def test_text_without_settings_is_all_prompt() -> None:
    assert parse_parameters("just words") == {"Prompt": "just words", "Negative prompt": ""}


@pytest.mark.parametrize(
    ("model", "label"),
    [("demo", "demo"), ("runwayml/stable-diffusion-v1-5", "runwayml/stable-diffusion-v1-5"),
     ("/m/dreamshaper_8.safetensors", "dreamshaper_8"), ("./models/sd15", "sd15"), ("model.ckpt", "model")],
)
def test_model_label(model: str, label: str) -> None:
    assert model_label(model) == label


def test_model_hash_clip_skip_and_lora_hashes_in_a1111s_order_and_quoting() -> None:
    from sdworker.domain.result import AppliedLora

    request = GenerationRequest("a cat <lora:add_detail:0.5>", num_inference_steps=8)
    loras = (AppliedLora("add_detail", 0.5, "7c6bad76eb54"), AppliedLora("x", 1.0, "0123456789ab"))
    ran = GenerationResult(images=(), seeds=(1,), width=64, height=64, scheduler="euler", steps_run=8, seconds=1.0,
                           model="dreamshaper_8", model_hash="879db523c3", clip_skip=2, loras=loras)
    text = parameters_text(request, ran, 0, "/models")
    assert text == (
        "a cat <lora:add_detail:0.5>\n"
        "Steps: 8, Sampler: Euler, CFG scale: 7.5, Seed: 1, Size: 64x64, Model hash: 879db523c3, "
        'Model: dreamshaper_8, Clip skip: 2, Lora hashes: "add_detail: 7c6bad76eb54, x: 0123456789ab"'
    )
    parsed = parse_parameters(text)
    assert parsed["Lora hashes"] == "add_detail: 7c6bad76eb54, x: 0123456789ab" and parsed["Model hash"] == "879db523c3"

"""The hires fix equals diffusers' two passes done by hand: the text-to-image pipeline (latents, or an
image for the PIL upscalers), the upscale written out here with torch/PIL, then the image-to-image
pipeline at the larger size, each pass with ``torch.Generator("cpu").manual_seed(seed)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
from PIL import Image

from sdworker.domain.hires import HiresFix
from sdworker.domain.request import GenerationRequest, Operation
from sdworker.domain.result import GenerationResult
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.engine.protocol import BatchItem, StepView
from sdworker.errors import InvalidRequest

from .helpers import as_init, init_image, pixels

PROMPT = "a photo of a cat"
SEED = 4321
SIZE = 64


def by_hand(
    txt2img: Any, img2img: Any, *, scale: float = 2.0, interpolate: tuple[str, bool] | None = ("bilinear", False),
    resample: Image.Resampling | None = None, steps: int = 6, second_steps: int | None = None, strength: float = 0.6,
    second_prompt: str = PROMPT, n: int = 1, ancestral: bool = False,
) -> list[np.ndarray]:
    """The two passes as a diffusers user writes them."""
    def generator() -> Any:
        gens = [torch.Generator("cpu").manual_seed(SEED + i) for i in range(n)]
        return gens[0] if n == 1 else gens

    originals = txt2img.scheduler, img2img.scheduler
    if ancestral:
        txt2img.scheduler = EulerAncestralDiscreteScheduler.from_config(originals[0].config)
        img2img.scheduler = EulerAncestralDiscreteScheduler.from_config(originals[1].config)
    try:
        common = {"guidance_scale": 7.5, "negative_prompt": "blurry", "num_images_per_prompt": n}
        big = int(SIZE * scale)
        if interpolate is not None:
            latents = txt2img(PROMPT, num_inference_steps=steps, width=SIZE, height=SIZE, generator=generator(),
                              output_type="latent", **common).images
            mode, antialias = interpolate
            image: Any = torch.nn.functional.interpolate(latents, size=(big // 8, big // 8), mode=mode,
                                                         antialias=antialias)
        else:
            assert resample is not None
            first = txt2img(PROMPT, num_inference_steps=steps, width=SIZE, height=SIZE, generator=generator(),
                            **common).images
            image = [im.resize((big, big), resample) for im in first]
        out = img2img(second_prompt, image=image, strength=strength, num_inference_steps=second_steps or steps,
                      generator=generator(), **common).images
    finally:
        txt2img.scheduler, img2img.scheduler = originals
    return [pixels(im) for im in out]


def hires_request(hires: HiresFix, *, steps: int = 6, **kwargs: Any) -> GenerationRequest:
    fields: dict[str, Any] = {"negative_prompt": "blurry", "num_inference_steps": steps, "guidance_scale": 7.5,
                              "width": SIZE, "height": SIZE, "seed": SEED, "hires": hires, **kwargs}
    return GenerationRequest(PROMPT, **fields)


@pytest.mark.parametrize(
    ("upscaler", "mode"),
    [("Latent", ("bilinear", False)), ("Latent (bicubic antialiased)", ("bicubic", True)),
     ("Latent (nearest-exact)", ("nearest-exact", False))],
)
def test_latent_hires_equals_two_diffusers_passes(
    demo_engine: DiffusersEngine, reference_pipelines: dict[str, Any], upscaler: str, mode: tuple[str, bool]
) -> None:
    result = demo_engine.generate(hires_request(HiresFix(scale=2.0, upscaler=upscaler, strength=0.6)))
    expected = by_hand(reference_pipelines["txt2img"], reference_pipelines["img2img"], interpolate=mode)
    assert (result.width, result.height) == (2 * SIZE, 2 * SIZE) and result.first_pass_size == (SIZE, SIZE)
    assert result.images[0].size == (2 * SIZE, 2 * SIZE)
    np.testing.assert_array_equal(pixels(result.images[0]), expected[0])


def test_image_upscaler_hires_equals_two_diffusers_passes(
    demo_engine: DiffusersEngine, reference_pipelines: dict[str, Any]
) -> None:
    result = demo_engine.generate(hires_request(HiresFix(scale=1.5, upscaler="Lanczos", strength=0.5)))
    expected = by_hand(reference_pipelines["txt2img"], reference_pipelines["img2img"], scale=1.5, interpolate=None,
                       resample=Image.Resampling.LANCZOS, strength=0.5)
    np.testing.assert_array_equal(pixels(result.images[0]), expected[0])


def test_second_pass_prompt_steps_and_ancestral_noise(
    demo_engine: DiffusersEngine, reference_pipelines: dict[str, Any]
) -> None:
    hires = HiresFix(scale=2.0, steps=5, strength=0.8, prompt="a photo of a dog")
    result = demo_engine.generate(hires_request(hires, scheduler="euler_a", num_images=2))
    expected = by_hand(reference_pipelines["txt2img"], reference_pipelines["img2img"], second_steps=5, strength=0.8,
                       second_prompt="a photo of a dog", n=2, ancestral=True)
    for got, want in zip(result.images, expected, strict=True):
        np.testing.assert_array_equal(pixels(got), want)
    plain = demo_engine.generate(hires_request(HiresFix(scale=2.0, steps=5, strength=0.8), scheduler="euler_a"))
    assert not np.array_equal(pixels(plain.images[0]), expected[0])  # the second prompt mattered


def test_progress_counts_both_passes_as_one_job(demo_engine: DiffusersEngine) -> None:
    seen: list[tuple[int, int, int]] = []
    previews: list[tuple[int, int]] = []

    def hook(view: StepView) -> None:
        seen.append((view.pass_number, view.step, view.total))
        if view.step in (3, 8):
            shown = view.render_preview("latent2rgb", 256)
            assert shown is not None
            previews.append(shown.pixels.shape[:2])

    result = demo_engine.generate(hires_request(HiresFix(scale=2.0, strength=0.5), scheduler="euler"), on_step=hook)
    total = 6 + 3  # Euler: one call per step; the second pass runs int(6 x 0.5)
    assert result.steps_run == total
    assert seen == [(1, s, total) for s in range(1, 7)] + [(2, s, total) for s in range(7, 10)]
    assert previews == [(64, 64), (128, 128)]  # each pass previews its own size


def test_hires_jobs_never_share_a_batch_loop(demo_engine: DiffusersEngine) -> None:
    jobs = [hires_request(HiresFix(strength=0.5), steps=2, seed=SEED + i) for i in range(2)]
    batched = demo_engine.generate_batch([BatchItem(job) for job in jobs])
    for job, outcome in zip(jobs, batched, strict=True):
        assert isinstance(outcome, GenerationResult) and outcome.images[0].size == (128, 128)
        np.testing.assert_array_equal(pixels(outcome.images[0]), pixels(demo_engine.generate(job).images[0]))


def test_resize_to_both_sides_crops_the_centre(demo_engine: DiffusersEngine) -> None:
    result = demo_engine.generate(hires_request(HiresFix(resize_width=128, resize_height=96, strength=0.5), steps=2))
    assert (result.width, result.height) == (128, 96) and result.images[0].size == (128, 96)


def test_sdxl_hires_equals_two_diffusers_passes(demo_engine: DiffusersEngine, demo_bundle: Path) -> None:
    folder = demo_bundle / "models" / "demo-sdxl"
    txt2img = StableDiffusionXLPipeline.from_pretrained(folder)
    img2img = StableDiffusionXLImg2ImgPipeline(**txt2img.components)
    for pipe in (txt2img, img2img):
        pipe.set_progress_bar_config(disable=True)
    engine = DiffusersEngine(demo_engine.settings)  # its own: the shared engine's last model stays demo-sd15
    try:
        result = engine.generate(hires_request(HiresFix(scale=2.0, strength=0.6), model="demo-sdxl"))
    finally:
        engine.close()
    np.testing.assert_array_equal(pixels(result.images[0]), by_hand(txt2img, img2img)[0])


def test_bad_hires_requests_name_their_field(demo_engine: DiffusersEngine) -> None:
    small = DiffusersEngine(demo_engine.settings.model_copy(update={"max_pixels": 100 * 100}))
    small._library = demo_engine.library
    cases: list[tuple[DiffusersEngine, GenerationRequest, str]] = [
        (small, hires_request(HiresFix(scale=2.0)), "hires.scale"),
        (demo_engine, hires_request(HiresFix(upscaler="R-ESRGAN 4x+")), "hires.upscaler"),
        (demo_engine, hires_request(HiresFix(strength=0.1), steps=4), "hires.steps"),
        (demo_engine, GenerationRequest(PROMPT, operation=Operation.IMAGE_TO_IMAGE, init_image=as_init(init_image(64)),
                                        hires=HiresFix()), "hires"),
    ]
    for engine, request, field in cases:
        with pytest.raises(InvalidRequest) as caught:
            engine.validate_request(request) if request.operation is Operation.TEXT_TO_IMAGE else engine.generate(
                request)
        assert caught.value.field == field, caught.value

"""Edit jobs (``image_edit``) on the demo bundle's tiny edit models: the engine's pixels equal diffusers'
own edit pipeline called directly with the same seed; the reference image reaches the pixels; the rules
(an edit on a non-edit model, a non-edit job on an edit model, too many or no reference images) are 4xx
naming the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdworker.domain.request import GenerationRequest, InputImage, Operation
from sdworker.engine.demo_edit import DEMO_FLUX1_KONTEXT, DEMO_QWENIMAGE_EDIT, DEMO_QWENIMAGE_EDIT_PLUS
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.errors import InvalidRequest
from sdworker.settings import Settings

from .helpers import as_init, init_image, pixels

SEED = 5
PROMPT = "make the door red"


@pytest.fixture(scope="module")
def edit_engine(demo_cache_dir: Path) -> DiffusersEngine:
    return DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu", max_loaded_models=1))


def _reference(index: int) -> InputImage:
    return InputImage.from_image(init_image(64, seed=index), f"reference_images.{index}")


def _edit(engine: DiffusersEngine, model: str, references: tuple[InputImage, ...], **kwargs: Any) -> Any:
    request = GenerationRequest(PROMPT, operation=Operation.EDIT, model=model, reference_images=references,
                                width=64, height=64, num_inference_steps=3, guidance_scale=2.5, seed=SEED, **kwargs)
    return engine.generate(request)


def test_kontext_edit_equals_flux_kontext_pipeline(edit_engine: DiffusersEngine, demo_bundle: Path) -> None:
    from diffusers import FluxKontextPipeline

    result = _edit(edit_engine, DEMO_FLUX1_KONTEXT, (_reference(0),))
    pipe = FluxKontextPipeline.from_pretrained(demo_bundle / "models" / DEMO_FLUX1_KONTEXT)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(image=init_image(64, seed=0), prompt=PROMPT, width=64, height=64, num_inference_steps=3,
                    guidance_scale=2.5, generator=torch.Generator("cpu").manual_seed(SEED), max_area=64 * 64,
                    _auto_resize=False).images[0]
    assert result.images[0].size == (64, 64)
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))


def test_kontext_reference_image_changes_the_result(edit_engine: DiffusersEngine) -> None:
    first = _edit(edit_engine, DEMO_FLUX1_KONTEXT, (_reference(0),))
    other = _edit(edit_engine, DEMO_FLUX1_KONTEXT, (_reference(1),))
    again = _edit(edit_engine, DEMO_FLUX1_KONTEXT, (_reference(0),))
    np.testing.assert_array_equal(pixels(first.images[0]), pixels(again.images[0]))
    assert np.abs(pixels(first.images[0]).astype(int) - pixels(other.images[0]).astype(int)).max() > 0


def test_edit_size_defaults_to_the_reference_image(edit_engine: DiffusersEngine) -> None:
    reference = InputImage.from_image(init_image(80, seed=2), "reference_images.0")  # 80 rounds down to 16's 80
    request = GenerationRequest(PROMPT, operation=Operation.EDIT, model=DEMO_FLUX1_KONTEXT,
                                reference_images=(reference,), num_inference_steps=1, seed=SEED)
    assert edit_engine.generate(request).images[0].size == (80, 80)


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (GenerationRequest(PROMPT, operation=Operation.EDIT, model="demo-flux1",
                           reference_images=(InputImage(b"x", "reference_images.0"),)), "operation"),
        (GenerationRequest(PROMPT, operation=Operation.EDIT, model="demo-sd15",
                           reference_images=(InputImage(b"x", "reference_images.0"),)), "operation"),
        (GenerationRequest(PROMPT, model=DEMO_FLUX1_KONTEXT), "operation"),
        (GenerationRequest(PROMPT, operation=Operation.EDIT, model=DEMO_FLUX1_KONTEXT,
                           reference_images=(InputImage(b"x", "a"), InputImage(b"y", "b"))), "reference_images"),
        (GenerationRequest(PROMPT, operation=Operation.EDIT, model=DEMO_FLUX1_KONTEXT), "reference_images"),
        (GenerationRequest(PROMPT, model="demo-flux1", reference_images=(InputImage(b"x", "a"),)),
         "reference_images"),
    ],
    ids=["edit-on-flux1", "edit-on-sd15", "txt2img-on-kontext", "two-images-on-kontext", "no-image",
         "images-on-txt2img"],
)
def test_edit_rules_refuse_at_submit(edit_engine: DiffusersEngine, request_: GenerationRequest, field: str) -> None:
    from sdworker.domain.checks import check_request

    with pytest.raises(InvalidRequest) as caught:
        check_request(request_)  # what needs no model
        edit_engine.validate_request(request_)  # what needs the library (nothing is loaded)
    assert caught.value.field == field


def test_a_reference_image_that_does_not_decode_names_its_field(edit_engine: DiffusersEngine) -> None:
    from sdworker.errors import InvalidImage

    with pytest.raises(InvalidImage) as caught:
        _edit(edit_engine, DEMO_FLUX1_KONTEXT, (InputImage(b"not an image", "reference_images.0"),))
    assert caught.value.field == "reference_images.0"


def test_init_image_on_an_edit_is_refused() -> None:
    from sdworker.domain.checks import check_request

    request = GenerationRequest(PROMPT, operation=Operation.EDIT, reference_images=(_reference(0),),
                                init_image=as_init(init_image()))
    with pytest.raises(InvalidRequest) as caught:
        check_request(request)
    assert caught.value.field == "init_image"


def test_flux2_edit_with_two_references_equals_flux2_klein_pipeline(edit_engine: DiffusersEngine,
                                                                     demo_bundle: Path) -> None:
    """FLUX.2 klein edits with several references (a list); each one reaches the pixels."""
    from diffusers import Flux2KleinPipeline

    both = _edit(edit_engine, "demo-flux2", (_reference(0), _reference(1)))
    pipe = Flux2KleinPipeline.from_pretrained(demo_bundle / "models" / "demo-flux2")
    pipe.set_progress_bar_config(disable=True)
    expected = pipe(image=[init_image(64, seed=0), init_image(64, seed=1)], prompt=PROMPT, width=64, height=64,
                    num_inference_steps=3, guidance_scale=2.5,
                    generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    np.testing.assert_array_equal(pixels(both.images[0]), pixels(expected))
    for kept in (_reference(0), _reference(1)):  # dropping either reference changes the image
        one = _edit(edit_engine, "demo-flux2", (kept,))
        assert np.abs(pixels(one.images[0]).astype(int) - pixels(both.images[0]).astype(int)).max() > 0


def test_flux2_runs_text_to_image_and_takes_at_most_four_references(edit_engine: DiffusersEngine) -> None:
    edit_engine.validate_request(GenerationRequest(PROMPT, model="demo-flux2"))  # an edit model that also generates
    five = tuple(InputImage(b"x", f"reference_images.{i}") for i in range(5))
    with pytest.raises(InvalidRequest) as caught:
        from sdworker.domain.checks import check_request

        check_request(GenerationRequest(PROMPT, operation=Operation.EDIT, model="demo-flux2", reference_images=five))
    assert caught.value.field == "reference_images"


def _qwen_edit_pipe(demo_bundle: Path, name: str) -> Any:
    """The bundle's Qwen-Image-Edit(-Plus) loaded by diffusers directly; without torchvision the
    processor is passed in as the engine does (``engine.qwen_processor``)."""
    import diffusers

    from sdworker.engine.qwen_processor import load_qwen2vl_processor, torchvision_missing

    folder = demo_bundle / "models" / name
    cls = diffusers.QwenImageEditPlusPipeline if name == DEMO_QWENIMAGE_EDIT_PLUS else diffusers.QwenImageEditPipeline
    extra = {"processor": load_qwen2vl_processor(folder / "processor")} if torchvision_missing() else {}
    pipe = cls.from_pretrained(folder, **extra)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _differs(first: Any, second: Any) -> bool:
    return bool(np.abs(pixels(first.images[0]).astype(int) - pixels(second.images[0]).astype(int)).max() > 0)


def test_qwenimage_edit_equals_qwen_image_edit_pipeline(edit_engine: DiffusersEngine, demo_bundle: Path) -> None:
    """Qwen-Image-Edit: one reference, true CFG with the model card's " " negative (guidance 2.5 > 1)."""
    result = _edit(edit_engine, DEMO_QWENIMAGE_EDIT, (_reference(0),))
    pipe = _qwen_edit_pipe(demo_bundle, DEMO_QWENIMAGE_EDIT)
    expected = pipe(image=init_image(64, seed=0), prompt=PROMPT, negative_prompt=" ", width=64, height=64,
                    num_inference_steps=3, true_cfg_scale=2.5,
                    generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    assert result.images[0].size == (64, 64)
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))
    assert _differs(result, _edit(edit_engine, DEMO_QWENIMAGE_EDIT, (_reference(1),)))  # the reference counts


def test_qwenimage_edit_plus_with_two_references_equals_its_pipeline(edit_engine: DiffusersEngine,
                                                                     demo_bundle: Path) -> None:
    """Qwen-Image-Edit-Plus takes the references as a list; dropping either changes the pixels."""
    both = _edit(edit_engine, DEMO_QWENIMAGE_EDIT_PLUS, (_reference(0), _reference(1)))
    pipe = _qwen_edit_pipe(demo_bundle, DEMO_QWENIMAGE_EDIT_PLUS)
    expected = pipe(image=[init_image(64, seed=0), init_image(64, seed=1)], prompt=PROMPT, negative_prompt=" ",
                    width=64, height=64, num_inference_steps=3, true_cfg_scale=2.5,
                    generator=torch.Generator("cpu").manual_seed(SEED)).images[0]
    np.testing.assert_array_equal(pixels(both.images[0]), pixels(expected))
    for kept in (_reference(0), _reference(1)):
        assert _differs(both, _edit(edit_engine, DEMO_QWENIMAGE_EDIT_PLUS, (kept,)))

"""The engine's step hook, cancellation, shared weights, previews, info and request errors."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import numpy as np
import pytest
import torch

from sdworker.domain.control import CancelToken
from sdworker.domain.request import GenerationRequest, Operation
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.engine.protocol import StepView
from sdworker.errors import InvalidImage, InvalidRequest, JobCancelled, UnknownScheduler

from .helpers import as_init, as_mask, half_mask, init_image

SMALL: dict[str, Any] = {"num_inference_steps": 4, "width": 64, "height": 64, "seed": 7, "scheduler": "euler"}


class CallCounter:
    """Counts calls of one module method by wrapping it on the instance (undone by monkeypatch)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str) -> None:
        self.calls = 0
        original = getattr(owner, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, counted)


def test_info_describes_the_loaded_demo(demo_engine: DiffusersEngine) -> None:
    info = demo_engine.info
    # --model demo serves the demo bundle; its default model is the SD 1.x one.
    assert (info.model, info.family, info.device, info.dtype) == ("demo-sd15", "sd1", "cpu", "float32")
    assert info.default_scheduler == "pndm"
    for name in ("euler", "euler_a", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "lms", "pndm", "unipc"):
        assert name in info.schedulers
    assert info.preview_methods == ("latent2rgb", "taesd", "vae")  # the demo ships a TAESD
    assert set(info.operations) == set(Operation)


def test_the_three_operations_share_one_set_of_weights(demo_engine: DiffusersEngine) -> None:
    model = demo_engine.model
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        base = getattr(model.text_to_image, name)
        assert getattr(model.image_to_image, name) is base, name
        assert getattr(model.inpaint, name) is base, name


@pytest.mark.parametrize("cancel_at", [1, 3])
def test_cancel_at_step_k_stops_at_step_k(
    demo_engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch, cancel_at: int
) -> None:
    unet = CallCounter(monkeypatch, demo_engine.model.text_to_image.unet, "forward")
    vae_decode = CallCounter(monkeypatch, demo_engine.model.text_to_image.vae, "decode")
    token = CancelToken()
    seen: list[int] = []
    held: list[weakref.ref[torch.Tensor]] = []

    def hook(view: StepView) -> None:
        seen.append(view.step)
        held.append(weakref.ref(view.latents()))
        if view.step == cancel_at:
            token.cancel()

    with pytest.raises(JobCancelled):
        demo_engine.generate(GenerationRequest("a cat", **SMALL), on_step=hook, cancel=token)
    assert seen == list(range(1, cancel_at + 1))
    assert unet.calls == cancel_at  # one batched (guided) UNet call per step, none after the cancel
    assert vae_decode.calls == 0  # the final decode is skipped
    gc.collect()
    assert all(ref() is None for ref in held)  # the loop's latents were freed
    assert demo_engine.model.text_to_image.scheduler is not None  # the engine still works:
    assert demo_engine.generate(GenerationRequest("a cat", **SMALL)).steps_run == 4


def test_a_cancel_before_the_start_runs_nothing(demo_engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    unet = CallCounter(monkeypatch, demo_engine.model.text_to_image.unet, "forward")
    token = CancelToken()
    token.cancel()
    with pytest.raises(JobCancelled):
        demo_engine.generate(GenerationRequest("a cat", **SMALL), cancel=token)
    assert unet.calls == 0


def test_hook_sees_every_step_with_latents_and_x0(demo_engine: DiffusersEngine) -> None:
    views: list[tuple[int, int, tuple[int, ...], bool]] = []

    def hook(view: StepView) -> None:
        x0 = view.predicted_x0()
        views.append((view.step, view.total, tuple(view.latents().shape), x0 is not None and x0.shape == (2, 4, 8, 8)))

    demo_engine.generate(GenerationRequest("a cat", num_images=2, **SMALL), on_step=hook)
    assert views == [(i, 4, (2, 4, 8, 8), True) for i in range(1, 5)]


@pytest.mark.parametrize("method", ["auto", "latent2rgb", "taesd", "vae"])
def test_previews_decode_the_predicted_image(demo_engine: DiffusersEngine, method: str) -> None:
    previews: list[Any] = []
    demo_engine.generate(
        GenerationRequest("a cat", **{**SMALL, "width": 96}),
        on_step=lambda view: previews.append(view.render_preview(method, 48)),
    )
    assert len(previews) == 4
    first = previews[0]
    assert first is not None
    assert first.method == ("taesd" if method == "auto" else method)
    assert first.source == "x0"
    assert first.pixels.dtype == np.uint8
    assert first.pixels.shape == (32, 48, 3)  # 64x96 image, longest side 48


def test_preview_method_none_gives_nothing(demo_engine: DiffusersEngine) -> None:
    previews: list[Any] = []
    demo_engine.generate(
        GenerationRequest("a cat", **SMALL), on_step=lambda v: previews.append(v.render_preview("none", 64))
    )
    assert previews == [None] * 4


def test_a_failing_decoder_gives_no_preview_not_a_failed_job(
    demo_engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoder = demo_engine._slot(demo_engine.library.model("demo-sd15"), None).decoders["latent2rgb"]

    def broken(latents: torch.Tensor, max_size: int) -> Any:
        raise RuntimeError("decoder broke")

    monkeypatch.setattr(decoder, "decode", broken)
    previews: list[Any] = []
    result = demo_engine.generate(
        GenerationRequest("a cat", **SMALL), on_step=lambda v: previews.append(v.render_preview("latent2rgb", 64))
    )
    assert previews == [None] * 4
    assert len(result.images) == 1


@pytest.mark.parametrize(
    ("request_", "error", "field"),
    [
        (GenerationRequest("x", **{**SMALL, "scheduler": "warp_drive"}), UnknownScheduler, "scheduler"),
        (GenerationRequest("x", num_inference_steps=2, width=60, height=64), InvalidRequest, "width"),
        (GenerationRequest("x", num_inference_steps=2, width=64, height=0), InvalidRequest, "height"),
        (GenerationRequest("x", operation=Operation.IMAGE_TO_IMAGE, **SMALL), InvalidRequest, "init_image"),
        (
            GenerationRequest("x", operation=Operation.INPAINT, init_image=as_init(init_image(64)), **SMALL),
            InvalidRequest,
            "mask_image",
        ),
        (
            GenerationRequest("x", operation=Operation.INPAINT, init_image=as_init(init_image(64)),
                              mask_image=as_mask(half_mask(32)), **SMALL),
            InvalidImage,
            "mask_image",
        ),
        (
            GenerationRequest("x", operation=Operation.IMAGE_TO_IMAGE, init_image=as_init(init_image(64)), strength=0.1,
                              **SMALL),
            InvalidRequest,
            "strength",
        ),
    ],
)
def test_bad_requests_name_the_field(
    demo_engine: DiffusersEngine, request_: GenerationRequest, error: type[Exception], field: str
) -> None:
    with pytest.raises(error) as caught:
        demo_engine.generate(request_)
    assert getattr(caught.value, "field", None) == field
    assert field in str(caught.value)


def test_an_unexpected_failure_is_a_safe_generation_failed(
    demo_engine: DiffusersEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sdworker.errors import GenerationFailed

    def explode(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("/secret/path/model.bin exploded")

    monkeypatch.setattr(demo_engine.model.text_to_image.unet, "forward", explode)
    with pytest.raises(GenerationFailed) as caught:
        demo_engine.generate(GenerationRequest("a cat", **SMALL))
    assert "/secret" not in caught.value.message and "RuntimeError" in caught.value.message

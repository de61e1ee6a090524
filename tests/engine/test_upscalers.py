"""Upscaler models (``engine.upscalers``, our RRDBNet) in the hires fix: the demo bundle's tiny ESRGAN
loads from its ``.pth`` with ``weights_only``; the original ESRGAN key layout reads as BasicSR's; a hires
job with the model equals diffusers' two passes with the model's upscale between them, done by hand;
an unknown upscaler is a 4xx naming the field."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from sdworker.domain.hires import HiresFix
from sdworker.engine.demo_upscaler import DEMO_UPSCALER, UPSCALERS_DIR
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.engine.rrdbnet import RRDBNet, build_rrdbnet
from sdworker.errors import InvalidRequest

from .helpers import pixels
from .test_hires import PROMPT, SEED, SIZE, hires_request


def _original_esrgan_keys(state: dict[str, torch.Tensor], blocks: int) -> dict[str, torch.Tensor]:
    """BasicSR names back to the original ESRGAN's (``model.1.sub.N.RDBk.convj.0``...), as old files have."""
    top = {"conv_first": "model.0", "conv_up1": "model.3", "conv_up2": "model.6", "conv_hr": "model.8",
           "conv_last": "model.10", "conv_body": f"model.1.sub.{blocks}"}
    out = {}
    for key, tensor in state.items():
        head, _, kind = key.rpartition(".")
        if head in top:
            out[f"{top[head]}.{kind}"] = tensor
        else:
            _, block, rdb, conv = head.split(".")
            out[f"model.1.sub.{block}.RDB{rdb[-1]}.{conv}.0.{kind}"] = tensor
    return out


def test_rrdbnet_reads_its_sizes_and_both_key_layouts() -> None:
    torch.manual_seed(0)
    for scale in (4, 2):
        net = RRDBNet(scale=scale, features=8, blocks=2, grow=4).eval()
        image = torch.rand(1, 3, 16, 16)
        for state in (net.state_dict(), _original_esrgan_keys(net.state_dict(), 2)):
            rebuilt = build_rrdbnet(dict(state))
            assert rebuilt.scale == scale
            with torch.no_grad():
                out = rebuilt(image)
                assert out.shape == (1, 3, 16 * scale, 16 * scale)
                torch.testing.assert_close(out, net(image), rtol=0, atol=0)


def test_hires_with_the_demo_upscaler_equals_two_passes_by_hand(
    demo_engine: DiffusersEngine, reference_pipelines: dict[str, Any], demo_bundle: Path
) -> None:
    assert DEMO_UPSCALER in demo_engine.upscalers.names()
    result = demo_engine.generate(hires_request(HiresFix(scale=2.0, upscaler=DEMO_UPSCALER, strength=0.5), steps=4))
    loaded = torch.load(demo_bundle / UPSCALERS_DIR / f"{DEMO_UPSCALER}.pth", weights_only=True)["params_ema"]
    net = build_rrdbnet(loaded)
    common: dict[str, Any] = {"guidance_scale": 7.5, "negative_prompt": "blurry", "num_inference_steps": 4}
    first = reference_pipelines["txt2img"](PROMPT, width=SIZE, height=SIZE,
                                           generator=torch.Generator("cpu").manual_seed(SEED), **common).images[0]
    with torch.inference_mode():
        x = torch.from_numpy(np.asarray(first, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
        y = net(x).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    upscaled = Image.fromarray((y * 255.0).round().astype(np.uint8)).resize((2 * SIZE, 2 * SIZE),
                                                                            Image.Resampling.LANCZOS)
    expected = reference_pipelines["img2img"](PROMPT, image=upscaled, strength=0.5,
                                              generator=torch.Generator("cpu").manual_seed(SEED), **common).images[0]
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))
    lanczos = demo_engine.generate(hires_request(HiresFix(scale=2.0, upscaler="Lanczos", strength=0.5), steps=4))
    assert not np.array_equal(pixels(lanczos.images[0]), pixels(result.images[0]))  # the model mattered


def test_unknown_upscaler_is_a_4xx_naming_the_field(demo_engine: DiffusersEngine) -> None:
    with pytest.raises(InvalidRequest) as caught:
        demo_engine.validate_request(hires_request(HiresFix(upscaler="4x-nope")))
    assert caught.value.field == "hires.upscaler" and DEMO_UPSCALER in str(caught.value)


def test_a_pth_that_needs_pickled_code_is_refused(tmp_path: Path, demo_engine: DiffusersEngine) -> None:
    from sdworker.engine.upscalers import Upscalers

    torch.save({"params_ema": {"conv_first.weight": torch.zeros(1)}, "extra": Path("x")}, tmp_path / "evil.pth")
    with pytest.raises(InvalidRequest) as caught:
        Upscalers(tmp_path).load("evil", torch.device("cpu"))
    assert caught.value.field == "hires.upscaler" and "weights_only" in str(caught.value)


def test_an_image_upscale_job_equals_the_model_and_the_resize(demo_engine: DiffusersEngine, demo_bundle: Path) -> None:
    from sdworker.domain.request import GenerationRequest, Operation

    from .helpers import as_init, init_image

    source = init_image(32, seed=3)
    request = GenerationRequest("", operation=Operation.UPSCALE, init_image=as_init(source), width=120, height=120,
                                upscaler=DEMO_UPSCALER)
    result = demo_engine.generate(request)
    weights = torch.load(demo_bundle / UPSCALERS_DIR / f"{DEMO_UPSCALER}.pth", weights_only=True)
    net = build_rrdbnet(weights["params_ema"])
    with torch.inference_mode():
        x = torch.from_numpy(np.asarray(source, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
        y = (net(x).clamp(0, 1)[0].permute(1, 2, 0).numpy() * 255.0).round().astype(np.uint8)
    expected = Image.fromarray(y).resize((120, 120), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))
    lanczos = demo_engine.generate(GenerationRequest("", operation=Operation.UPSCALE, init_image=as_init(source),
                                                     width=64, height=64, upscaler="Lanczos"))
    np.testing.assert_array_equal(pixels(lanczos.images[0]), pixels(source.resize((64, 64), Image.Resampling.LANCZOS)))
    with pytest.raises(InvalidRequest) as caught:
        demo_engine.validate_request(GenerationRequest("", operation=Operation.UPSCALE, init_image=as_init(source),
                                                       upscaler="4x-nope"))
    assert caught.value.field == "upscaler"


def test_an_upscale_refuses_fields_it_would_ignore() -> None:
    from sdworker.domain.checks import check_request
    from sdworker.domain.request import GenerationRequest, InputImage, IpAdapterRef, Operation

    from .helpers import as_init, init_image

    base = GenerationRequest("", operation=Operation.UPSCALE, init_image=as_init(init_image(16)), upscaler="Lanczos")
    check_request(base)
    adapter = IpAdapterRef("demo-ip-adapter", (InputImage(b"x", "ip_adapter.images.0"),))
    cases = ((replace(base, hires=HiresFix()), "hires"), (replace(base, ip_adapter=adapter), "ip_adapter"),
             (replace(base, upscaler=None), "upscaler"), (replace(base, init_image=None), "init_image"))
    for request, field in cases:
        with pytest.raises(InvalidRequest) as caught:
            check_request(request)
        assert caught.value.field == field


def _compact_state(scale: int = 2, features: int = 8, convs: int = 2) -> dict[str, torch.Tensor]:
    """A Real-ESRGAN Compact (SRVGGNetCompact) state dict, not an RRDBNet: conv, (prelu, conv) x convs,
    prelu, then the conv into the pixel shuffle (``body.N`` numbering as in its files)."""
    torch.manual_seed(0)
    state: dict[str, torch.Tensor] = {
        "body.0.weight": torch.randn(features, 3, 3, 3) * 0.1,
        "body.0.bias": torch.zeros(features),
        "body.1.weight": torch.full((features,), 0.2),
    }
    index = 2
    for _ in range(convs):
        state[f"body.{index}.weight"] = torch.randn(features, features, 3, 3) * 0.1
        state[f"body.{index}.bias"] = torch.zeros(features)
        state[f"body.{index + 1}.weight"] = torch.full((features,), 0.2)
        index += 2
    state[f"body.{index}.weight"] = torch.randn(3 * scale * scale, features, 3, 3) * 0.1
    state[f"body.{index}.bias"] = torch.zeros(3 * scale * scale)
    return state


def test_another_architecture_without_spandrel_is_a_4xx_that_says_what_it_needs(tmp_path: Path) -> None:
    """Our loader reads RRDBNet only; another architecture needs spandrel, which does not import here
    (docs/guided.md): the job is refused naming the field and saying why, never a 500."""
    from safetensors.torch import save_file

    from sdworker.engine.upscalers import Upscalers

    try:
        import spandrel  # noqa: F401
    except Exception:
        pass
    else:
        pytest.skip("spandrel imports here: test_another_architecture_loads_through_spandrel covers it")
    save_file(_compact_state(), str(tmp_path / "4x-compact.safetensors"))
    with pytest.raises(InvalidRequest) as caught:
        Upscalers(tmp_path).load("4x-compact", torch.device("cpu"))
    assert caught.value.field == "hires.upscaler"
    assert "4x-compact.safetensors" in str(caught.value) and "spandrel" in str(caught.value)


def test_another_architecture_loads_through_spandrel(tmp_path: Path) -> None:
    """Where spandrel imports (a torch and torchvision that match), a Compact model runs through it and
    its output equals spandrel's own descriptor called on the same image."""
    spandrel = pytest.importorskip("spandrel")
    from safetensors.torch import save_file

    from sdworker.engine.upscalers import Upscalers

    state = _compact_state(scale=2)
    save_file(state, str(tmp_path / "2x-compact.safetensors"))
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8), "RGB")
    ours = Upscalers(tmp_path).upscale("2x-compact", [image], (32, 32), torch.device("cpu"))[0]
    descriptor = spandrel.ModelLoader().load_from_state_dict(state).eval()
    pixels_in = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
    with torch.inference_mode():
        theirs = descriptor(pixels_in).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert ours.size == (32, 32)
    assert np.array_equal(np.asarray(ours), (theirs * 255.0).round().astype(np.uint8))

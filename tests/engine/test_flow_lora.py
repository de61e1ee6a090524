"""Per-request LoRAs on SD 3.5, Z-Image, Qwen-Image and FLUX.2 klein (FLUX.1's are in test_flux1.py,
FLUX.2 dev's in test_flux2_dev.py): each family's LoRA, made here with peft on the demo transformer
and saved by the pipeline's own ``save_lora_weights``, gives the pixels of diffusers' pipeline with
``load_lora_weights`` called directly; it stays loaded and unfused; the next job without it equals
diffusers' pipeline that never saw it (a fresh worker's). A LoRA of another family is refused: at
submit where its key names tell the family, when it loads where they do not (attention-only names read
alike in several families) and the model lacks some of its layers, and then nothing of it remains."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdworker.domain.request import GenerationRequest, LoraRef
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.errors import LoraIncompatible
from sdworker.settings import Settings

from .helpers import pixels, save_transformer_lora

SEED = 13
CALL: dict[str, Any] = {"width": 64, "height": 64, "num_inference_steps": 2}
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]  # the default of diffusers' training scripts
# family -> (demo model, the LoRA's target modules, what the library reads from its keys)
FAMILIES: dict[str, tuple[str, list[str], str | None]] = {
    "sd3": ("demo-sd3", ATTENTION, "sd3"),  # the demo's layer 0 has SD 3.5 medium's attn2
    "zimage": ("demo-zimage", ATTENTION, "zimage"),
    "qwenimage": ("demo-qwenimage", ATTENTION, None),  # attention only: names shared with FLUX and SD 3.5
    "flux2": ("demo-flux2", [*ATTENTION, "to_qkv_mlp_proj"], "flux2"),
}
GUIDANCE_ARGUMENT = {"qwenimage": "true_cfg_scale"}


def _pipeline_class(folder: Path) -> Any:
    import diffusers

    return getattr(diffusers, json.loads((folder / "model_index.json").read_text())["_class_name"])


@pytest.fixture(scope="module")
def lora_dir(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    import diffusers

    folder = tmp_path_factory.mktemp("flow-loras")
    for family, (model, targets, _) in FAMILIES.items():
        source = demo_bundle / "models" / model
        transformer_class = getattr(diffusers, json.loads((source / "model_index.json").read_text())["transformer"][1])
        transformer = transformer_class.from_pretrained(source / "transformer")
        save_transformer_lora(
            _pipeline_class(source), transformer, folder / f"{family}.safetensors", targets, seed=len(family)
        )
    for name in ("demo-flux1-kohya", "demo-peft"):
        shutil.copy(demo_bundle / "loras" / f"{name}.safetensors", folder)
    return folder


@pytest.fixture(scope="module")
def engine(demo_cache_dir: Path, lora_dir: Path) -> DiffusersEngine:
    return DiffusersEngine(
        Settings(model="demo", cache_dir=demo_cache_dir, lora_dir=str(lora_dir), device="cpu", max_loaded_models=2)
    )


def _request(family: str, *loras: str) -> GenerationRequest:
    return GenerationRequest(
        "a photo of a cat",
        model=FAMILIES[family][0],
        seed=SEED,
        guidance_scale=1.0,
        loras=tuple(LoraRef(name, 1.0) for name in loras),
        **CALL,
    )


def _diffusers(demo_bundle: Path, family: str, lora: Path | None = None) -> np.ndarray:
    folder = demo_bundle / "models" / FAMILIES[family][0]
    pipe = _pipeline_class(folder).from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    if lora is not None:
        pipe.load_lora_weights(str(lora))
    out = pipe(
        prompt="a photo of a cat",
        generator=torch.Generator("cpu").manual_seed(SEED),
        **{GUIDANCE_ARGUMENT.get(family, "guidance_scale"): 1.0},
        **CALL,
    )
    return pixels(out.images[0])


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_lora_gives_diffusers_pixels_stays_unfused_and_cached_and_leaves_nothing_behind(
    engine: DiffusersEngine, demo_bundle: Path, lora_dir: Path, family: str
) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert engine.library.lora(family).family == FAMILIES[family][2]
    plain, with_lora = (
        _diffusers(demo_bundle, family),
        _diffusers(demo_bundle, family, lora_dir / f"{family}.safetensors"),
    )
    assert np.abs(plain.astype(int) - with_lora.astype(int)).max() > 10  # the LoRA does something

    first = engine.generate(_request(family, family))
    np.testing.assert_array_equal(pixels(first.images[0]), with_lora)
    assert [(lora.name, lora.weight) for lora in first.loras] == [(family, 1.0)]
    slot = engine._slot(engine.library.model(FAMILIES[family][0]), None)
    adapters = dict(slot.loras._adapters)
    layers = [m for m in slot.model.text_to_image.transformer.modules() if isinstance(m, BaseTunerLayer)]
    assert layers and not any(layer.merged for layer in layers)  # unfused: switching LoRAs is exact

    again = engine.generate(_request(family, family))
    assert slot.loras._adapters == adapters  # cached: the same adapter, not loaded a second time
    np.testing.assert_array_equal(pixels(again.images[0]), with_lora)

    after = engine.generate(_request(family))
    np.testing.assert_array_equal(pixels(after.images[0]), plain)


@pytest.mark.parametrize(
    ("lora", "family", "named"),
    [
        ("sd3", "zimage", "sd3"),
        ("zimage", "flux2", "zimage"),
        ("flux2", "qwenimage", "flux2"),
        ("demo-flux1-kohya", "flux2", "flux1"),
        ("demo-peft", "sd3", "a UNet model"),
    ],
)
def test_a_lora_whose_keys_tell_another_family_is_refused_at_submit(
    engine: DiffusersEngine, lora: str, family: str, named: str
) -> None:
    with pytest.raises(LoraIncompatible, match=f"is for {named}, not for model '{FAMILIES[family][0]}'") as caught:
        engine.validate_request(_request(family, lora))
    assert caught.value.field == "loras"


def test_a_lora_with_layers_the_model_lacks_is_refused_when_it_loads_and_leaves_nothing(
    engine: DiffusersEngine, demo_bundle: Path
) -> None:
    """Qwen-Image's attention-only LoRA has two blocks; the FLUX.2 demo has one: diffusers' loader takes
    block 0 and only warns about block 1, which would run a Qwen LoRA on FLUX.2 half applied."""
    engine.validate_request(_request("flux2", "qwenimage"))  # its names cannot tell
    with pytest.raises(
        LoraIncompatible, match="'qwenimage' does not fit model 'demo-flux2': it has layers the model lacks"
    ) as caught:
        engine.generate(_request("flux2", "qwenimage"))
    assert caught.value.field == "loras"
    after = engine.generate(_request("flux2"))
    np.testing.assert_array_equal(pixels(after.images[0]), _diffusers(demo_bundle, "flux2"))

"""FLUX.2 (klein) on the demo: the library recognises the family and its variant from the files; text-to-
image and inpaint equal diffusers' ``Flux2KleinPipeline`` / ``Flux2KleinInpaintPipeline`` called directly;
image-to-image (no diffusers pipeline) is a 4xx naming the model and the operation; the negative prompt
is reported as ignored; previews unpack the 128-channel tokens to the 32-channel latents, and the last
one is the final image."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdworker.domain.families import family_facts
from sdworker.domain.request import GenerationRequest, Operation
from sdworker.engine.demo_flux2 import DEMO_FLUX2
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.engine.families import flow_adapter
from sdworker.errors import InvalidRequest
from sdworker.settings import Settings

from .helpers import as_init, as_mask, half_mask, init_image, pixels

SEED = 23
CALL: dict[str, Any] = {"width": 64, "height": 64, "num_inference_steps": 3, "guidance_scale": 1.0}


@pytest.fixture(scope="module")
def engine(demo_cache_dir: Path) -> DiffusersEngine:
    return DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu"))


def _reference(demo_bundle: Path, name: str) -> Any:
    import diffusers

    pipe = getattr(diffusers, name).from_pretrained(demo_bundle / "models" / DEMO_FLUX2)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_library_recognises_flux2_klein(engine: DiffusersEngine) -> None:
    models = {m.name: m for m in engine.list_models()}
    model = models[DEMO_FLUX2]
    assert (model.family, model.variant, model.size_multiple) == ("flux2", "klein", 16)
    assert (model.default_steps, model.default_guidance) == (4, 1.0)  # the step-distilled klein's model card


def test_text_to_image_equals_diffusers(engine: DiffusersEngine, demo_bundle: Path) -> None:
    result = engine.generate(GenerationRequest("a photo of a cat", model=DEMO_FLUX2, seed=SEED, **CALL))
    expected = _reference(demo_bundle, "Flux2KleinPipeline")(
        prompt="a photo of a cat", generator=torch.Generator("cpu").manual_seed(SEED), **CALL).images[0]
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))
    assert (result.family, result.warnings) == ("flux2", ())


def test_inpaint_equals_diffusers(engine: DiffusersEngine, demo_bundle: Path) -> None:
    request = GenerationRequest("a photo of a cat", operation=Operation.INPAINT, model=DEMO_FLUX2, seed=SEED,
                                init_image=as_init(init_image()), mask_image=as_mask(half_mask()), strength=0.8,
                                **CALL)
    result = engine.generate(request)
    expected = _reference(demo_bundle, "Flux2KleinInpaintPipeline")(
        prompt="a photo of a cat", image=init_image(), mask_image=half_mask(), strength=0.8,
        generator=torch.Generator("cpu").manual_seed(SEED), **CALL).images[0]
    np.testing.assert_array_equal(pixels(result.images[0]), pixels(expected))


def test_image_to_image_is_refused_naming_the_model(engine: DiffusersEngine) -> None:
    request = GenerationRequest("a cat", operation=Operation.IMAGE_TO_IMAGE, model=DEMO_FLUX2, seed=SEED,
                                init_image=as_init(init_image()), strength=0.8, **CALL)
    for check in (engine.validate_request, engine.generate):  # at submit, and by the engine itself
        with pytest.raises(InvalidRequest, match=r"FLUX\.2") as caught:
            check(request)
        assert caught.value.field == "operation" and DEMO_FLUX2 in caught.value.message


def test_negative_prompt_and_emphasis_are_reported_as_ignored(engine: DiffusersEngine) -> None:
    result = engine.generate(GenerationRequest("a (cat:1.3)", negative_prompt="blurry", model=DEMO_FLUX2,
                                               seed=SEED, **{**CALL, "num_inference_steps": 1}))
    assert [w.split(":")[0] for w in result.warnings] == ["negative_prompt", "prompt"]


def test_last_preview_is_the_final_image_and_mid_previews_beat_raw_latents(engine: DiffusersEngine) -> None:
    adapter = flow_adapter("flux2")
    assert adapter is not None
    views: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def on_step(view: Any) -> None:
        slot = engine._slot(engine.library.model(DEMO_FLUX2), None)
        raw = slot.decoders["vae"].decode(adapter.unpack(view.latents(), 64, 64), 64)
        views.append((view.render_preview("vae", 64).pixels, raw, view.render_preview("latent2rgb", 64).pixels))

    result = engine.generate(GenerationRequest("a cat", model=DEMO_FLUX2, seed=SEED,
                                               **{**CALL, "num_inference_steps": 4}), on_step=on_step)
    final = pixels(result.images[0]).astype(float)
    assert all(view[0].shape == (64, 64, 3) and view[2].shape[2] == 3 for view in views)
    assert np.abs(views[-1][0].astype(float) - final).max() <= 2
    mid_preview, mid_raw = (a.astype(float) for a in views[1][:2])
    assert np.mean((mid_preview - final) ** 2) < np.mean((mid_raw - final) ** 2)
    vae = engine._slot(engine.library.model(DEMO_FLUX2), None).model.pipe.vae
    assert family_facts("flux2").latent.channels == vae.config.latent_channels == 32


def test_cli_generate_with_a_flux2_folder_equals_diffusers(
    demo_bundle: Path, demo_cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``sdworker generate --model /path/to/flux2-klein``: detected as FLUX.2 klein, steps and guidance left
    out are klein's (4 without guidance), the ignored negative prompt is a warning."""
    from PIL import Image

    from sdworker.cli import main

    out = tmp_path / "flux2.png"
    code = main(["generate", "a photo of a cat", "--model", str(demo_bundle / "models" / DEMO_FLUX2), "-o", str(out),
                 "--width", "64", "--height", "64", "--seed", str(SEED), "--negative", "blurry",
                 "--cache-dir", str(demo_cache_dir), "--device", "cpu"])
    assert code == 0
    expected = _reference(demo_bundle, "Flux2KleinPipeline")(
        prompt="a photo of a cat", generator=torch.Generator("cpu").manual_seed(SEED), width=64, height=64,
        num_inference_steps=4, guidance_scale=1.0).images[0]
    with Image.open(out) as image:
        np.testing.assert_array_equal(pixels(image), pixels(expected))
    assert "warning: negative_prompt: ignored" in capsys.readouterr().err


def _bfl_layout(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers FLUX.2 transformer's weights in BFL's names, as ``flux-2-klein-4b.safetensors`` is
    published: the inverse of diffusers' ``convert_flux2_transformer_checkpoint_to_diffusers`` (fused
    q/k/v, norm ``scale``s, the final modulation's (shift, scale) order)."""
    renames = [
        ("x_embedder", "img_in"), ("context_embedder", "txt_in"), ("proj_out", "final_layer.linear"),
        ("time_guidance_embed.timestep_embedder.linear_1", "time_in.in_layer"),
        ("time_guidance_embed.timestep_embedder.linear_2", "time_in.out_layer"),
        ("time_guidance_embed.guidance_embedder.linear_1", "guidance_in.in_layer"),
        ("time_guidance_embed.guidance_embedder.linear_2", "guidance_in.out_layer"),
        ("stream_modulation_img.linear", "stream_modulation_img.lin"),
        ("stream_modulation_txt.linear", "stream_modulation_txt.lin"),
        ("single_stream_modulation.linear", "single_stream_modulation.lin"),
    ]
    double = {"attn.norm_q.weight": "img_attn.norm.query_norm.scale",
              "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
              "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
              "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale", "attn.to_out.0": "img_attn.proj",
              "attn.to_add_out": "txt_attn.proj", "ff.linear_in": "img_mlp.0", "ff.linear_out": "img_mlp.2",
              "ff_context.linear_in": "txt_mlp.0", "ff_context.linear_out": "txt_mlp.2"}
    single = {"attn.to_qkv_mlp_proj": "linear1", "attn.norm_q.weight": "norm.query_norm.scale",
              "attn.norm_k.weight": "norm.key_norm.scale", "attn.to_out": "linear2"}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key.startswith("norm_out.linear."):
            shift_last, scale_first = value.chunk(2, dim=0)  # diffusers keeps (scale, shift)
            out[key.replace("norm_out.linear", "final_layer.adaLN_modulation.1")] = torch.cat([scale_first, shift_last])
            continue
        parts = key.split(".")
        if parts[0] in ("transformer_blocks", "single_transformer_blocks"):
            table, prefix = (double, "double_blocks") if parts[0] == "transformer_blocks" else (single, "single_blocks")
            inner = ".".join(parts[2:])
            if parts[0] == "transformer_blocks" and parts[3] in ("to_q", "add_q_proj"):
                kind = "img" if parts[3] == "to_q" else "txt"
                names = ("to_q", "to_k", "to_v") if kind == "img" else ("add_q_proj", "add_k_proj", "add_v_proj")
                fused = torch.cat([state[".".join([*parts[:3], n, parts[-1]])] for n in names])
                out[f"{prefix}.{parts[1]}.{kind}_attn.qkv.{parts[-1]}"] = fused
                continue
            if parts[0] == "transformer_blocks" and parts[3] in ("to_k", "to_v", "add_k_proj", "add_v_proj"):
                continue
            match = next(((d, b) for d, b in table.items() if inner == d or inner.startswith(d + ".")), None)
            assert match is not None, key
            out[f"{prefix}.{parts[1]}.{match[1]}{inner[len(match[0]):]}"] = value
            continue
        for old, new in renames:
            key = key.replace(old, new)
        out[key] = value
    return out


@pytest.mark.parametrize("layout", ["bfl", "comfy", "diffusers"])
def test_a_transformer_only_file_equals_its_folder(demo_bundle: Path, tmp_path: Path, layout: str) -> None:
    """The klein transformer as one file (BFL's names, the same under ComfyUI's ``model.diffusion_model.``,
    or diffusers' own), completed from the demo folder found in the same models folder: the library reads
    it as a FLUX.2 klein transformer file and its pixels equal the folder's."""
    from safetensors.torch import load_file, save_file

    folder = demo_bundle / "models" / DEMO_FLUX2
    state = load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors")
    if layout != "diffusers":
        state = _bfl_layout(state)
        assert len(state) < len(load_file(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    if layout == "comfy":
        state = {f"model.diffusion_model.{k}": v for k, v in state.items()}
    models = tmp_path / "models"
    models.mkdir()
    (models / DEMO_FLUX2).symlink_to(folder, target_is_directory=True)
    save_file(state, str(models / "flux-2-klein-tiny.safetensors"))
    engine = DiffusersEngine(Settings(models_dir=str(models), cache_dir=tmp_path, device="cpu", max_loaded_models=1))
    entry = engine.library.model("flux-2-klein-tiny")
    assert (entry.family, entry.kind, entry.transformer_only, entry.variant) == ("flux2", "file", True, "klein")
    request = {"prompt": "a photo of a cat", "seed": SEED, **CALL}
    from_file = engine.generate(GenerationRequest(model="flux-2-klein-tiny", **request))
    expected = _reference(demo_bundle, "Flux2KleinPipeline")(
        prompt="a photo of a cat", generator=torch.Generator("cpu").manual_seed(SEED), **CALL).images[0]
    np.testing.assert_array_equal(pixels(from_file.images[0]), pixels(expected))

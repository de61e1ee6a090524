"""FLUX.1 transformer files in BFL's layout (the form of ``flux1-dev.safetensors`` and most fine-tunes)
and FLUX.1 Fill. The key mapping equals diffusers' own converter at FLUX.1's width, tensor for tensor;
a tiny BFL file written from ``demo-flux1``'s transformer gives its folder's pixels; a tiny Fill file
(384 input channels) inpaints with ``FluxFillPipeline``'s pixels and refuses text-to-image."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from sdworker.domain.request import GenerationRequest, Operation
from sdworker.engine.bfl_layout import PREFIX, bfl_to_diffusers
from sdworker.engine.demo_flow import DEMO_FLUX1, FLUX1_TRANSFORMER_CONFIG
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.errors import InvalidRequest
from sdworker.settings import Settings

from .helpers import as_init, as_mask, half_mask, init_image, pixels

SEED = 29
CALL: dict[str, Any] = {"width": 64, "height": 64, "num_inference_steps": 3, "guidance_scale": 3.5}


def diffusers_to_bfl(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse mapping, written here from BFL's module names, to make test files in BFL's layout."""
    out: dict[str, torch.Tensor] = {}
    pairs = {"time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
             "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
             "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
             "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
             "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
             "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
             "context_embedder": "txt_in", "x_embedder": "img_in", "proj_out": "final_layer.linear"}
    blocks = {k.split(".")[1] for k in state if k.startswith("transformer_blocks.")}
    singles = {k.split(".")[1] for k in state if k.startswith("single_transformer_blocks.")}
    for kind in ("weight", "bias"):
        for new, old in pairs.items():
            if f"{new}.{kind}" in state:
                out[f"{old}.{kind}"] = state[f"{new}.{kind}"]
        scale, shift = state[f"norm_out.linear.{kind}"].chunk(2)
        out[f"final_layer.adaLN_modulation.1.{kind}"] = torch.cat([shift, scale])
        for i in blocks:
            d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
            for new, old in (("norm1.linear", "img_mod.lin"), ("norm1_context.linear", "txt_mod.lin"),
                             ("ff.net.0.proj", "img_mlp.0"), ("ff.net.2", "img_mlp.2"),
                             ("ff_context.net.0.proj", "txt_mlp.0"), ("ff_context.net.2", "txt_mlp.2"),
                             ("attn.to_out.0", "img_attn.proj"), ("attn.to_add_out", "txt_attn.proj")):
                out[f"{b}{old}.{kind}"] = state[f"{d}{new}.{kind}"]
            out[f"{b}img_attn.qkv.{kind}"] = torch.cat([state[f"{d}attn.to_{x}.{kind}"] for x in "qkv"])
            out[f"{b}txt_attn.qkv.{kind}"] = torch.cat([state[f"{d}attn.add_{x}_proj.{kind}"] for x in "qkv"])
        for i in singles:
            d, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
            out[f"{b}modulation.lin.{kind}"] = state[f"{d}norm.linear.{kind}"]
            out[f"{b}linear2.{kind}"] = state[f"{d}proj_out.{kind}"]
            out[f"{b}linear1.{kind}"] = torch.cat([state[f"{d}attn.to_{x}.{kind}"] for x in "qkv"]
                                                  + [state[f"{d}proj_mlp.{kind}"]])
    for i in blocks:
        d, b = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        for stream, q, k in (("img", "norm_q", "norm_k"), ("txt", "norm_added_q", "norm_added_k")):
            out[f"{b}{stream}_attn.norm.query_norm.scale"] = state[f"{d}attn.{q}.weight"]
            out[f"{b}{stream}_attn.norm.key_norm.scale"] = state[f"{d}attn.{k}.weight"]
    for i in singles:
        d, b = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        out[f"{b}norm.query_norm.scale"] = state[f"{d}attn.norm_q.weight"]
        out[f"{b}norm.key_norm.scale"] = state[f"{d}attn.norm_k.weight"]
    return {PREFIX + k: v.contiguous() for k, v in out.items()}


def test_the_mapping_equals_diffusers_converter_at_flux1_width() -> None:
    """diffusers' converter needs FLUX.1's width (3072) only to split ``linear1``; tensors of one column
    with FLUX.1's row counts exercise every key and every split at the real sizes, with distinct values."""
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    generator = torch.Generator().manual_seed(0)
    width, mlp = 3072, 4 * 3072
    rows = {"img_in": width, "txt_in": width, "time_in.in_layer": width, "time_in.out_layer": width,
            "vector_in.in_layer": width, "vector_in.out_layer": width, "guidance_in.in_layer": width,
            "guidance_in.out_layer": width, "final_layer.linear": 64, "final_layer.adaLN_modulation.1": 2 * width}
    for i in range(2):
        for stream in ("img", "txt"):
            block = f"double_blocks.{i}.{stream}"
            rows |= {f"{block}_mod.lin": 6 * width, f"{block}_attn.qkv": 3 * width, f"{block}_attn.proj": width,
                     f"{block}_mlp.0": mlp, f"{block}_mlp.2": width}
        rows |= {f"single_blocks.{i}.modulation.lin": 3 * width, f"single_blocks.{i}.linear1": 3 * width + mlp,
                 f"single_blocks.{i}.linear2": width}
    checkpoint = {}
    for name, count in rows.items():
        checkpoint[f"{PREFIX}{name}.weight"] = torch.randn(count, 1, generator=generator)
        checkpoint[f"{PREFIX}{name}.bias"] = torch.randn(count, generator=generator)
    for i in range(2):
        for norm in ("img_attn.norm.query_norm", "img_attn.norm.key_norm", "txt_attn.norm.query_norm",
                     "txt_attn.norm.key_norm"):
            checkpoint[f"{PREFIX}double_blocks.{i}.{norm}.scale"] = torch.randn(128, generator=generator)
        for norm in ("norm.query_norm", "norm.key_norm"):
            checkpoint[f"{PREFIX}single_blocks.{i}.{norm}.scale"] = torch.randn(128, generator=generator)
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(checkpoint))
    ours = bfl_to_diffusers(dict(checkpoint))
    assert sorted(ours) == sorted(theirs)
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)


@pytest.fixture(scope="module")
def library(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder: demo-flux1 (for the configs), its transformer in BFL's layout, a tiny Fill in BFL's."""
    from diffusers import FluxTransformer2DModel
    from safetensors.torch import save_file

    models = tmp_path_factory.mktemp("bfl-models")
    os.symlink(demo_bundle / "models" / DEMO_FLUX1, models / DEMO_FLUX1)
    dev = FluxTransformer2DModel.from_pretrained(demo_bundle / "models" / DEMO_FLUX1, subfolder="transformer")
    save_file(diffusers_to_bfl(dev.state_dict()), str(models / "flux1-bfl.safetensors"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        fill = FluxTransformer2DModel(**{**FLUX1_TRANSFORMER_CONFIG, "in_channels": 384, "out_channels": 64})
    save_file(diffusers_to_bfl(fill.state_dict()), str(models / "flux1-fill-bfl.safetensors"))
    return models


@pytest.fixture(scope="module")
def engine(library: Path, demo_cache_dir: Path) -> DiffusersEngine:
    return DiffusersEngine(Settings(models_dir=library, cache_dir=demo_cache_dir, device="cpu", max_loaded_models=3))


def test_a_bfl_transformer_file_equals_its_folder(engine: DiffusersEngine) -> None:
    entries = {m.name: m for m in engine.list_models()}
    assert (entries["flux1-bfl"].family, entries["flux1-bfl"].variant) == ("flux1", "dev")
    from_file = engine.generate(GenerationRequest("a photo of a cat", model="flux1-bfl", seed=SEED, **CALL))
    from_folder = engine.generate(GenerationRequest("a photo of a cat", model=DEMO_FLUX1, seed=SEED, **CALL))
    np.testing.assert_array_equal(pixels(from_file.images[0]), pixels(from_folder.images[0]))


def test_a_fill_file_inpaints_as_flux_fill_pipeline(engine: DiffusersEngine, library: Path) -> None:
    from diffusers import FluxFillPipeline

    entries = {m.name: m for m in engine.list_models()}
    assert (entries["flux1-fill-bfl"].variant, entries["flux1-fill-bfl"].default_guidance) == ("fill", 30.0)
    request = GenerationRequest("a photo of a cat", operation=Operation.INPAINT, model="flux1-fill-bfl", seed=SEED,
                                init_image=as_init(init_image()), mask_image=as_mask(half_mask()), strength=1.0,
                                **{**CALL, "guidance_scale": 30.0})
    got = engine.generate(request)
    slot = engine._slot(engine.library.model("flux1-fill-bfl"), None)
    reference = FluxFillPipeline.from_pretrained(library / DEMO_FLUX1, transformer=slot.model.pipe.transformer)
    reference.set_progress_bar_config(disable=True)
    expected = reference("a photo of a cat", image=init_image(), mask_image=half_mask(), strength=1.0,
                         generator=torch.Generator("cpu").manual_seed(SEED), **{**CALL, "guidance_scale": 30.0})
    np.testing.assert_array_equal(pixels(got.images[0]), pixels(expected.images[0]))
    with pytest.raises(InvalidRequest, match="Fill model") as caught:
        engine.generate(GenerationRequest("a cat", model="flux1-fill-bfl", seed=SEED, **CALL))
    assert caught.value.field == "operation"


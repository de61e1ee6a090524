"""SDXL models take the SDXL pipelines: a tiny random SDXL (diffusers' test sizes) through the engine."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from sdworker.domain.request import GenerationRequest, Operation
from sdworker.engine.clip_tokenizer import build_clip_tokenizer, vocab_size
from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.settings import Settings

from .helpers import as_init, as_mask, half_mask, init_image, pixels


@pytest.fixture(scope="module")
def tiny_sdxl() -> Any:
    tokenizer: Any = build_clip_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = UNet2DConditionModel(
            block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
            addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
            cross_attention_dim=64, norm_num_groups=1,
        )
        vae = AutoencoderKL(block_out_channels=(8, 16, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=8)
        config = CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                                vocab_size=vocab_size(), projection_dim=32, bos_token_id=tokenizer.bos_token_id,
                                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        text_encoder, text_encoder_2 = CLIPTextModel(config), CLIPTextModelWithProjection(config)
    scheduler = EulerDiscreteScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                       timestep_spacing="leading", steps_offset=1)
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sdxl_through_the_engine(tiny_sdxl: Any) -> None:
    engine = DiffusersEngine.from_pipeline(tiny_sdxl, Settings(device="cpu"), model_name="tiny-sdxl")
    assert (engine.info.family, engine.info.default_scheduler) == ("sdxl", "euler")
    model = engine.model
    assert "XL" in type(model.image_to_image).__name__ and "XL" in type(model.inpaint).__name__
    assert model.inpaint.text_encoder_2 is tiny_sdxl.text_encoder_2 and model.image_to_image.unet is tiny_sdxl.unet

    result = engine.generate(GenerationRequest("a cat", num_inference_steps=2, width=64, height=64, seed=9,
                                               scheduler="euler_a"))
    own_scheduler = tiny_sdxl.scheduler
    tiny_sdxl.scheduler = EulerAncestralDiscreteScheduler.from_config(own_scheduler.config)
    try:
        expected = tiny_sdxl("a cat", num_inference_steps=2, width=64, height=64, guidance_scale=7.5,
                             generator=torch.Generator("cpu").manual_seed(9)).images[0]
    finally:
        tiny_sdxl.scheduler = own_scheduler
    assert np.array_equal(pixels(result.images[0]), pixels(expected))

    image, mask = init_image(64), half_mask(64)
    for operation in (Operation.IMAGE_TO_IMAGE, Operation.INPAINT):
        out = engine.generate(GenerationRequest("a cat", operation=operation, num_inference_steps=2, width=64,
                                                height=64, seed=1, init_image=as_init(image), mask_image=as_mask(mask),
                                                strength=1.0))
        assert out.images[0].size == (64, 64)

"""The demo models: tiny random-weight Stable Diffusion 1.x and SDXL models, LoRAs and an embedding.

It makes pictures of noise, but it runs every code path a real SD 1.x checkpoint runs (UNet with cross
attention, an 8x VAE, a CLIP text encoder and tokenizer, PNDM like SD 1.5 ships) in well under a second
per image on a CPU, so tests and ``make run`` need no download. Sizes follow diffusers' own
``get_dummy_components`` for Stable Diffusion, except the VAE, which has four blocks so latents are 1/8
of the image like the real one (previews and size checks then behave as they will on real models).

Layout of the folder ``write_demo_model`` writes (the SD 1.x demo)::

    model_index.json, unet/, vae/, text_encoder/, tokenizer/, scheduler/   diffusers' layout
    demo.safetensors   the same weights in the original (A1111/LDM) single-checkpoint layout
    taesd/             a tiny random AutoencoderTiny for preview tests (save_pretrained layout)

``write_demo_bundle`` (what ``sdworker demo-model DIR`` and ``--model demo`` use) lays out a models
folder a worker serves as it is::

    models/demo-sd15/     the folder above
    models/demo-sdxl/     a tiny SDXL (two text encoders, diffusers' SDXL test sizes) with its own taesd/
    loras/demo-peft.safetensors    a LoRA for demo-sd15 in the diffusers/peft key layout
    loras/demo-kohya.safetensors   the same kind in kohya's layout (lora_unet_*, lora_te_*, alpha)
    loras/demo-xl-peft.safetensors a LoRA for demo-sdxl (peft layout)
    embeddings/demo-embedding.safetensors   a 2-vector textual inversion for demo-sd15 (A1111 layout)
    models/demo-flux1/, models/demo-flux1-transformer.safetensors, loras/demo-flux1-kohya.safetensors
                   a tiny FLUX.1, its transformer alone in one file, a kohya FLUX LoRA (``demo_flow``)
    models/demo-flux1-q8.gguf   the same transformer as a GGUF file (Q8_0), completed from demo-flux1
    models/demo-sd3/     a tiny SD 3.5 (``demo_sd3``)
    models/demo-zimage/  a tiny Z-Image (``demo_zimage``)
    models/demo-qwenimage/   a tiny Qwen-Image (``demo_qwenimage``)
    models/demo-sd15-inpainting/   a tiny SD 1.x inpainting checkpoint, 9-channel UNet (``demo_inpaint``)
    models/demo-flux2/   a tiny FLUX.2 klein (``demo_flux2``)
    controlnet/demo-controlnet/   a ControlNet for demo-sd15 (diffusers ControlNetModel folder)
    controlnet/demo-flux1-controlnet/   a FLUX.1 ControlNet for demo-flux1 (``demo_controlnet``)
    models/demo-flux1-kontext/   a tiny FLUX.1 Kontext edit model (``demo_edit``)
    models/demo-qwenimage-edit/, models/demo-qwenimage-edit-plus/   a tiny Qwen-Image-Edit and
                   Edit-Plus (one set of weights; ``demo_edit``)
    ip-adapter/demo-ip-adapter.safetensors, ip-adapter/image_encoder/   an IP-Adapter for demo-sd15
                   and its CLIP image encoder (``demo_ip_adapter``)
    ip-adapter/demo-flux1-ip-adapter/   an XLabs-layout IP-Adapter for demo-flux1 with its own encoder
    upscalers/demo-esrgan.pth   a tiny ESRGAN (RRDBNet) upscaler for the hires fix (``demo_upscaler``)

LoRA, ControlNet and embedding weights are random and NOT zero (a ControlNet's output convolutions
start at zero too: one that changes nothing) (peft initialises ``lora_B`` at zero, a LoRA that
changes nothing), so tests can see each one change the image.

Everything is seeded per component, so the bytes are the same on every build with the same library
versions.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# v8: demo-qwenimage-edit, demo-qwenimage-edit-plus
# v6: controlnet/demo-flux1-controlnet
# (v5: demo-sd15-inpainting, demo-flux2, demo-flux1-q8.gguf, the edit models, IP-Adapter, upscaler
# v4: controlnet/demo-controlnet)
DEMO_VERSION = "demo-v8"
MODELS_DIR, LORAS_DIR, EMBEDDINGS_DIR, CONTROLNET_DIR = "models", "loras", "embeddings", "controlnet"
DEMO_CONTROLNET = "demo-controlnet"
DEMO_SD15, DEMO_SDXL = "demo-sd15", "demo-sdxl"
DEMO_LORAS = {"demo-peft": (DEMO_SD15, "peft"), "demo-kohya": (DEMO_SD15, "kohya"), "demo-xl-peft": (DEMO_SDXL, "peft")}
DEMO_EMBEDDING = "demo-embedding"
CHECKPOINT_NAME = "demo.safetensors"
TAESD_DIR = "taesd"
SEED = 1234

# Seeding uses torch's global RNG, so two threads building at once would interleave their draws.
_BUILD_LOCK = threading.Lock()

UNET_CONFIG: dict[str, Any] = {
    "sample_size": 8,  # 8 latents = 64 px, the demo's natural size
    "in_channels": 4,
    "out_channels": 4,
    "block_out_channels": (32, 64),
    "layers_per_block": 2,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "cross_attention_dim": 32,
    "attention_head_dim": 8,
    "norm_num_groups": 32,
}
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "block_out_channels": (8, 16, 32, 32),
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "latent_channels": 4,
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
    "scaling_factor": 0.18215,
}
TEXT_ENCODER_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 5,
    "num_attention_heads": 4,
    "max_position_embeddings": 77,
    "projection_dim": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
# What SD 1.5 ships in scheduler/scheduler_config.json.
SCHEDULER_CONFIG: dict[str, Any] = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def build_demo_components(seed: int = SEED) -> dict[str, Any]:
    """The demo pipeline's components in memory (fp32, CPU), each built from its own seed."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from sdworker.engine.clip_tokenizer import build_clip_tokenizer, build_vocab

    vocab, _ = build_vocab()
    tokenizer: Any = build_clip_tokenizer()
    torch.manual_seed(seed)
    unet: Any = UNet2DConditionModel(**UNET_CONFIG)
    torch.manual_seed(seed + 1)
    vae: Any = AutoencoderKL(**VAE_CONFIG)
    torch.manual_seed(seed + 2)
    text_config = CLIPTextConfig(
        **TEXT_ENCODER_CONFIG,
        vocab_size=len(vocab),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder: Any = CLIPTextModel(text_config)
    _learned_final_norm(text_encoder)
    scheduler = PNDMScheduler.from_config(SCHEDULER_CONFIG)
    for module in (unet, vae, text_encoder):
        module.eval()
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler": scheduler,
        "safety_checker": None,
        "feature_extractor": None,
        "image_encoder": None,
        "requires_safety_checker": False,
    }


def _learned_final_norm(text_encoder: Any) -> None:
    """Give the final layer norm a bias and gains like a trained CLIP's (fresh ones are 0 and 1).

    With bias 0 every token's output has mean 0, and A1111's emphasis, which restores a chunk's mean
    by multiplying with old mean / new mean, would divide rounding noise by rounding noise. Real CLIP's
    norm has a learned bias, so this keeps the demo's prompt weighting as well-behaved as a real model's.
    Draws from torch's global RNG: call it inside the caller's seeded section.
    """
    import torch

    norm = getattr(text_encoder, "text_model", text_encoder).final_layer_norm
    with torch.no_grad():
        norm.bias.normal_(0.0, 0.5)
        norm.weight.normal_(1.0, 0.1)


def build_demo_taesd(seed: int = SEED) -> Any:
    """A tiny random ``AutoencoderTiny`` (TAESD's shape with 16 instead of 64 channels)."""
    import torch

    try:  # the previews package owns the TAESD builder once it exists; use it so both agree
        from sdworker.previews.taesd import build_random_taesd  # type: ignore[attr-defined,unused-ignore]

        return build_random_taesd(seed)
    except ImportError:
        pass
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed + 3)
    taesd: Any = AutoencoderTiny(
        encoder_block_out_channels=(16, 16, 16, 16),
        decoder_block_out_channels=(16, 16, 16, 16),
        latent_channels=4,
    )
    return taesd.eval()


def write_demo_model(directory: Path) -> Path:
    """Write the demo model into ``directory`` (created; must be empty or missing). Returns it."""
    import torch
    from diffusers import StableDiffusionPipeline
    from safetensors.torch import save_file

    from sdworker.engine.ldm_layout import to_ldm_checkpoint

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):  # seeding must not disturb the caller's RNG
        components = build_demo_components()
        taesd = build_demo_taesd()
    pipe: Any = StableDiffusionPipeline(**components)
    pipe.save_pretrained(directory, safe_serialization=True)
    _write_slow_tokenizer_files(directory / "tokenizer")
    checkpoint = to_ldm_checkpoint(components["unet"], components["vae"], components["text_encoder"])
    # One metadata key only: safetensors writes a map's keys in hash order, which would change the bytes.
    save_file(checkpoint, str(directory / CHECKPOINT_NAME), metadata={"format": "pt"})
    taesd.save_pretrained(directory / TAESD_DIR, safe_serialization=True)
    return directory


def _write_slow_tokenizer_files(tokenizer_dir: Path) -> None:
    """Also write CLIP's classic ``vocab.json`` + ``merges.txt`` so tools that read those find them."""
    from sdworker.engine.clip_tokenizer import build_vocab

    vocab, merges = build_vocab()
    (tokenizer_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    lines = ["#version: 0.2", *(f"{a} {b}" for a, b in merges)]
    (tokenizer_dir / "merges.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def ensure_demo_model(cache_dir: Path) -> Path:
    """The SD 1.x demo model's diffusers folder (inside the demo bundle), built once."""
    return ensure_demo_bundle(cache_dir) / MODELS_DIR / DEMO_SD15


def ensure_demo_bundle(cache_dir: Path) -> Path:
    """The demo bundle under ``cache_dir/DEMO_VERSION``, built once.

    Safe with several processes at once (pytest workers, a server and a CLI): each builds into its own
    temporary folder beside the target and renames it into place. ``rename`` of a directory is atomic,
    so a reader sees either no model or a whole one; a loser of the race drops its copy.
    """
    cache_dir = Path(cache_dir)
    target = cache_dir / DEMO_VERSION
    if (target / _COMPLETE).is_file():
        return target
    if target.exists():  # builds land by an atomic rename: a target without the marker is damaged
        raise OSError(errno.ENOTEMPTY, f"{target} is an unfinished build")
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{DEMO_VERSION}-", dir=cache_dir))
    try:
        write_demo_bundle(staging)
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / _COMPLETE).is_file():
                raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            shutil.rmtree(staging)
    return target


_COMPLETE = "README.txt"  # written last: a bundle without it is a half-written one


def build_demo_sdxl_components(seed: int = SEED) -> dict[str, Any]:
    """A tiny SDXL (diffusers' own SDXL test sizes), fp32 on the CPU, seeded per component."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sdworker.engine.clip_tokenizer import build_clip_tokenizer, vocab_size

    tokenizer: Any = build_clip_tokenizer()
    torch.manual_seed(seed + 10)
    unet: Any = UNet2DConditionModel(
        block_out_channels=(32, 64), layers_per_block=2, sample_size=8, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2), projection_class_embeddings_input_dim=80,
        cross_attention_dim=64, norm_num_groups=1,
    )
    torch.manual_seed(seed + 11)
    vae: Any = AutoencoderKL(**{**VAE_CONFIG, "scaling_factor": 0.13025})
    config = CLIPTextConfig(
        hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=vocab_size(),
        projection_dim=32, hidden_act="gelu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed + 12)
    text_encoder: Any = CLIPTextModel(config)
    torch.manual_seed(seed + 13)
    text_encoder_2: Any = CLIPTextModelWithProjection(config)
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, timestep_spacing="leading", steps_offset=1
    )
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval()
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2,
            "tokenizer": tokenizer, "tokenizer_2": build_clip_tokenizer(), "scheduler": scheduler}


def build_demo_lora(
    components: dict[str, Any], fmt: str, seed: int, rank: int = 4, scale: float = 0.2
) -> dict[str, Any]:
    """A LoRA for ``components``' attention projections (UNet and text encoders) with random non-zero
    weights, in the ``peft`` (diffusers) or ``kohya`` key layout, as published LoRAs name their keys."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    state: dict[str, Any] = {}
    encoders = [("text_encoder", "lora_te1_" if "text_encoder_2" in components else "lora_te_"),
                ("text_encoder_2", "lora_te2_")]
    targets: list[tuple[str, str, Any]] = []
    for name, module in components["unet"].named_modules():
        if isinstance(module, torch.nn.Linear) and (name.endswith(("to_q", "to_k", "to_v", "to_out.0"))):
            targets.append((f"unet.{name}", "lora_unet_" + name.replace(".", "_"), module))
    for component, kohya_prefix in encoders:
        encoder = components.get(component)
        if encoder is None:
            continue
        for name, module in encoder.named_modules():
            if isinstance(module, torch.nn.Linear) and name.endswith(("q_proj", "k_proj", "v_proj", "out_proj")):
                full = name if name.startswith("text_model.") else f"text_model.{name}"  # the published layout
                targets.append((f"{component}.{full}", kohya_prefix + full.replace(".", "_"), module))
    for peft_key, kohya_key, module in targets:
        down = torch.randn(rank, module.in_features, generator=generator) * scale
        up = torch.randn(module.out_features, rank, generator=generator) * scale
        if fmt == "peft":
            state[f"{peft_key}.lora_A.weight"], state[f"{peft_key}.lora_B.weight"] = down, up
        else:
            state[f"{kohya_key}.lora_down.weight"], state[f"{kohya_key}.lora_up.weight"] = down, up
            state[f"{kohya_key}.alpha"] = torch.tensor(float(rank))
    return state


def build_demo_controlnet(unet: Any, seed: int) -> Any:
    """A ControlNet shaped after ``unet`` (its encoder's weights), with a small conditioning encoder and
    random, non-zero output convolutions, so the control image visibly steers the demo's pictures."""
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(seed)
    net: Any = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 16, 16, 16))
    for module in (net.controlnet_down_blocks, net.controlnet_mid_block, net.controlnet_cond_embedding.conv_out):
        for parameter in module.parameters():
            torch.nn.init.normal_(parameter, std=0.2)
    return net.eval()


def write_demo_bundle(directory: Path) -> Path:
    """The demo models, LoRAs and embedding in one folder (layout in the module docstring)."""
    with _without_progress_bars():
        return _write_demo_bundle(directory)


@contextlib.contextmanager
def _without_progress_bars() -> Iterator[None]:
    """No "Writing model shards: 100%|..." bar for each of the twenty-odd parts saved: on a server's
    first start they read like errors among its log lines (issue #20). Restored afterwards."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    libraries = [lib for lib in (diffusers_logging, transformers_logging) if lib.is_progress_bar_enabled()]
    for library in libraries:
        library.disable_progress_bar()
    try:
        yield
    finally:
        for library in libraries:
            library.enable_progress_bar()


def _write_demo_bundle(directory: Path) -> Path:
    import torch
    from diffusers import StableDiffusionXLPipeline
    from safetensors.torch import save_file

    from sdworker.engine.demo_controlnet import write_demo_controlnets
    from sdworker.engine.demo_edit import write_demo_edit_models
    from sdworker.engine.demo_flow import FLUX1_TRANSFORMER_CONFIG, write_demo_flux1
    from sdworker.engine.demo_flux2 import write_demo_flux2
    from sdworker.engine.demo_inpaint import write_demo_inpainting
    from sdworker.engine.demo_ip_adapter import write_demo_flux1_ip_adapter, write_demo_ip_adapter
    from sdworker.engine.demo_qwenimage import write_demo_qwenimage
    from sdworker.engine.demo_sd3 import write_demo_sd3
    from sdworker.engine.demo_upscaler import write_demo_upscaler
    from sdworker.engine.demo_zimage import write_demo_zimage

    directory = Path(directory)
    models = directory / MODELS_DIR
    write_demo_model(models / DEMO_SD15)
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        sd15 = build_demo_components()
        sdxl = build_demo_sdxl_components()
        taesd = build_demo_taesd(SEED + 20)
    pipe: Any = StableDiffusionXLPipeline(**sdxl)
    pipe.save_pretrained(models / DEMO_SDXL, safe_serialization=True)
    _write_slow_tokenizer_files(models / DEMO_SDXL / "tokenizer")
    _write_slow_tokenizer_files(models / DEMO_SDXL / "tokenizer_2")
    taesd.save_pretrained(models / DEMO_SDXL / TAESD_DIR, safe_serialization=True)
    (directory / LORAS_DIR).mkdir(parents=True, exist_ok=True)
    for index, (name, (model, fmt)) in enumerate(sorted(DEMO_LORAS.items())):
        state = build_demo_lora(sd15 if model == DEMO_SD15 else sdxl, fmt, seed=SEED + 30 + index)
        save_file(state, str(directory / LORAS_DIR / f"{name}.safetensors"), metadata={"format": "pt"})
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        write_demo_flux1(models, directory / LORAS_DIR, SEED + 100)
        write_demo_sd3(models, SEED + 200)
        write_demo_zimage(models, SEED + 300)
        write_demo_qwenimage(models, SEED + 400)
        write_demo_inpainting(models, SEED + 500)
        write_demo_flux2(models, SEED + 600)
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        write_demo_edit_models(models, SEED + 500)
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        build_demo_controlnet(sd15["unet"], SEED + 50).save_pretrained(
            directory / CONTROLNET_DIR / DEMO_CONTROLNET, safe_serialization=True
        )
        write_demo_ip_adapter(directory, sd15["unet"], SEED + 60)
        write_demo_upscaler(directory, SEED + 70)
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        write_demo_flux1_ip_adapter(directory, FLUX1_TRANSFORMER_CONFIG, SEED + 90)
    with _BUILD_LOCK, torch.random.fork_rng(devices=[]):
        write_demo_controlnets(directory / CONTROLNET_DIR, SEED + 100, SEED + 80)
    (directory / EMBEDDINGS_DIR).mkdir(parents=True, exist_ok=True)
    width = int(sd15["text_encoder"].config.hidden_size)
    vectors = torch.randn(2, width, generator=torch.Generator().manual_seed(SEED + 40)) * 0.5
    save_file({"emb_params": vectors}, str(directory / EMBEDDINGS_DIR / f"{DEMO_EMBEDDING}.safetensors"),
              metadata={"format": "pt"})
    (directory / _COMPLETE).write_text(
        "sdworker demo bundle: serve it with `sdworker serve --models-dir models --lora-dir loras "
        "--embeddings-dir embeddings` from this folder, or `--model demo`.\n",
        encoding="utf-8",
    )
    return directory

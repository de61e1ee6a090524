"""Tiny random-weight edit models for the demo bundle (``demo_model``), in diffusers' layout:

``demo-flux1-kontext``: FLUX.1 Kontext's shape (``FluxKontextPipeline``: FLUX.1 dev's modules, the
reference image's latents beside the noise in the transformer's sequence), one reference image.

``demo-qwenimage-edit`` and ``demo-qwenimage-edit-plus``: ``demo-qwenimage``'s modules (the
Qwen2.5-VL text encoder with its tiny vision tower, which sees the references) plus the tokenizer's
image markers and a ``processor/`` (``Qwen2VLProcessor``: the image processor config and the
tokenizer), as ``QwenImageEditPipeline`` and ``QwenImageEditPlusPipeline`` (several references)
ship. One set of weights, two ``model_index.json`` files.

Like the other demos they make pictures of noise, but the reference image reaches the pixels: a job
with another reference image makes another image (``tests/engine/test_edit.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEMO_FLUX1_KONTEXT = "demo-flux1-kontext"
DEMO_QWENIMAGE_EDIT, DEMO_QWENIMAGE_EDIT_PLUS = "demo-qwenimage-edit", "demo-qwenimage-edit-plus"


def write_demo_flux1_kontext(models: Path, seed: int) -> None:
    from diffusers import FluxKontextPipeline

    from sdworker.engine.demo_flow import build_demo_flux1_components

    pipe: Any = FluxKontextPipeline(**build_demo_flux1_components(seed), image_encoder=None, feature_extractor=None)
    pipe.save_pretrained(models / DEMO_FLUX1_KONTEXT, safe_serialization=True)


def write_demo_qwenimage_edit(models: Path, seed: int) -> None:
    """Both Qwen-Image-Edit demos. The modules are saved as Qwen-Image's (the same ones, no processor) and
    the processor by hand: transformers' ``save_pretrained`` of a processor wants its video processor,
    which needs torchvision (``engine.qwen_processor``); ``model_index.json`` then names the edit
    pipeline and its processor."""
    import torch
    from diffusers import QwenImagePipeline
    from transformers import Qwen2VLImageProcessorPil

    from sdworker.engine.demo_qwenimage import build_demo_qwenimage_components

    components = build_demo_qwenimage_components(seed, vision_tokens=True)
    # At random init the references barely reach the pixels (one level at most): q and k are
    # RMS-normed, so attention stays near uniform over hundreds of text and image tokens, and the
    # timestep modulation's gates are small. Sharper attention and larger gates make each reference
    # change the image visibly (tens of levels).
    with torch.no_grad():
        for key, parameter in components["transformer"].named_parameters():
            if any(part in key for part in ("norm_q", "norm_k", "norm_added_q", "norm_added_k", "_mod.")):
                parameter.mul_(4.0)
    pipe: Any = QwenImagePipeline(**components)
    for name, class_name in ((DEMO_QWENIMAGE_EDIT, "QwenImageEditPipeline"),
                             (DEMO_QWENIMAGE_EDIT_PLUS, "QwenImageEditPlusPipeline")):
        folder = models / name
        pipe.save_pretrained(folder, safe_serialization=True)
        Qwen2VLImageProcessorPil().save_pretrained(folder / "processor")
        components["tokenizer"].save_pretrained(folder / "processor")
        index_file = folder / "model_index.json"
        index = json.loads(index_file.read_text(encoding="utf-8"))
        index.update(_class_name=class_name, processor=["transformers", "Qwen2VLProcessor"])
        index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_demo_edit_models(models: Path, seed: int) -> None:
    """Every edit model of the bundle (layout in the module docstring)."""
    write_demo_flux1_kontext(models, seed)
    write_demo_qwenimage_edit(models, seed + 1)

"""Small shared helpers for the engine tests: deterministic input images and pixel access."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from sdworker.domain.request import InputImage


def init_image(size: int = 64, seed: int = 0) -> Image.Image:
    """A smooth colour gradient with some noise: an image with structure, the same every time."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:size, 0:size] / size
    rgb = np.stack([x, y, 1 - x * y], axis=-1) * 200 + rng.integers(0, 55, (size, size, 3))
    return Image.fromarray(rgb.astype(np.uint8), "RGB")


def half_mask(size: int = 64) -> Image.Image:
    """White (repaint) on the left half, black on the right."""
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[:, : size // 2] = 255
    return Image.fromarray(mask, "L")


def as_init(image: Image.Image) -> InputImage:
    """An image as a job carries it: the encoded file (PNG) and its wire field."""
    return InputImage.from_image(image, "init_image")


def as_mask(image: Image.Image) -> InputImage:
    return InputImage.from_image(image, "mask_image")


def pixels(image: Image.Image) -> npt.NDArray[np.uint8]:
    return np.asarray(image.convert("RGB"))


def save_transformer_lora(pipeline_class: Any, transformer: Any, path: Path, targets: list[str], seed: int) -> None:
    """A tiny LoRA with non-zero weights on ``transformer``'s ``targets``, saved by the pipeline's own
    ``save_lora_weights`` (diffusers' layout, ``transformer.<module>.lora_A.weight``) as ``path``; the
    transformer is left without the adapter."""
    import torch
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    torch.manual_seed(seed)
    transformer.add_adapter(
        LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights="gaussian"), adapter_name="made"
    )
    with torch.no_grad():
        for name, weight in transformer.named_parameters():
            if "lora_B" in name:
                weight.normal_(0, 1.5)  # peft starts B at zero: a LoRA that changes nothing
    layers = get_peft_model_state_dict(transformer, adapter_name="made")
    transformer.delete_adapters("made")
    pipeline_class.save_lora_weights(
        path.parent, transformer_lora_layers=layers, weight_name=path.name, safe_serialization=True
    )

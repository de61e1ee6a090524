"""Small shared helpers for the engine tests: deterministic input images and pixel access."""

from __future__ import annotations

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

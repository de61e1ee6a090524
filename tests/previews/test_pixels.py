"""Preview sizing and the [-1, 1] -> uint8 conversion shared by every decoder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdworker.previews.pixels import preview_size, to_preview_pixels


def test_preview_size_rules() -> None:
    assert preview_size(64, 64, 256) == (256, 256)  # 512 px image
    assert preview_size(128, 128, 256) == (256, 256)  # SDXL 1024 px
    assert preview_size(96, 64, 256) == (256, 171)
    assert preview_size(8, 8, 256) == (64, 64)  # never larger than the image
    assert preview_size(4, 400, 16) == (1, 16)  # never a zero-pixel side
    with pytest.raises(ValueError):
        preview_size(8, 8, 0)


def test_byte_mapping_ends_and_middle() -> None:
    image = torch.tensor([-1.0, 0.0, 1.0, -3.0, 3.0, 0.5]).view(1, 1, 1, 6).expand(1, 3, 1, 6)
    pixels = to_preview_pixels(image, (1, 6))
    assert pixels[0, :, 0].tolist() == [0, 128, 255, 0, 255, 191]  # (x + 1) / 2 * 255, rounded, clamped


def test_nan_from_an_fp16_overflow_shows_grey_not_garbage() -> None:
    image = torch.full((1, 3, 2, 2), float("nan"), dtype=torch.float16)
    assert (to_preview_pixels(image, (2, 2)) == 128).all()


def test_shrinking_averages_areas() -> None:
    # A 4x4 checkerboard of -1/1 shrunk to 2x2 averages each 2x2 block to 0: mid grey everywhere.
    board = (torch.arange(4)[:, None] + torch.arange(4)[None, :]) % 2 * 2.0 - 1.0
    pixels = to_preview_pixels(board.expand(1, 3, 4, 4), (2, 2))
    assert pixels.shape == (2, 2, 3)
    assert (pixels == 128).all()


def test_enlarging_keeps_the_corners() -> None:
    image = torch.tensor([[-1.0, 1.0], [1.0, -1.0]]).expand(1, 3, 2, 2)
    pixels = to_preview_pixels(image, (16, 16))
    assert pixels.shape == (16, 16, 3) and pixels.flags["C_CONTIGUOUS"]
    assert pixels.dtype == np.uint8
    assert pixels[0, 0, 0] < 40 and pixels[0, 15, 0] > 215

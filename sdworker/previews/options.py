"""Per-request preview options and the pixels a decoder hands back. No torch here (see package doc)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

# `auto` = `taesd` when the server has TAESD weights (--taesd), else `latent2rgb`.
PREVIEW_METHODS = ("auto", "latent2rgb", "taesd", "vae", "none")
DECODER_METHODS = ("latent2rgb", "taesd", "vae")
PREVIEW_FORMATS = ("jpeg", "webp", "png")


@dataclass(frozen=True, slots=True)
class PreviewOptions:
    """What previews a job wants. ``every`` = 0 or ``method`` = none turns them off."""

    every: int = 1
    min_interval_ms: int = 200
    method: str = "auto"
    max_size: int = 256
    format: str = "jpeg"
    quality: int = 80

    @property
    def enabled(self) -> bool:
        return self.every > 0 and self.method != "none"


@dataclass(frozen=True, slots=True)
class PreviewPixels:
    """A decoded preview of the first image of a batch: (H, W, 3) uint8 RGB, longest side <= max_size.

    ``method`` is the decoder that really ran (``auto`` resolved); ``source`` says whether it showed
    the predicted final image (``x0``) or the current noisy ``latents``.
    """

    pixels: npt.NDArray[np.uint8]
    method: str
    source: str

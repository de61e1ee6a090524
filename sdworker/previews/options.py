"""Per-request preview options and the pixels a decoder hands back. No torch here (see package doc)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sdworker.settings import Settings

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
    # The fields the client left to the server (filled from the API node's ``--preview-*`` defaults).
    # A fleet worker replaces them with its own defaults (``with_defaults``): the worker, not the API
    # node, knows its decoders and how much previews cost on its device.
    defaulted: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return self.every > 0 and self.method != "none"

    def with_defaults(self, defaults: PreviewOptions) -> PreviewOptions:
        """These options with every field the client left unset taken from ``defaults``."""
        if not self.defaulted:
            return self
        chosen = {name: getattr(defaults, name) for name in self.defaulted if name in PREVIEW_FIELDS}
        return replace(self, **chosen, defaulted=())


PREVIEW_FIELDS = ("every", "min_interval_ms", "method", "max_size", "format", "quality")


def preview_defaults(settings: Settings) -> PreviewOptions:
    """A node's ``--preview-*`` settings as options."""
    return PreviewOptions(
        every=settings.preview_every,
        min_interval_ms=settings.preview_min_interval_ms,
        method=settings.preview_method,
        max_size=settings.preview_max_size,
        format=settings.preview_format,
        quality=settings.preview_quality,
    )


@dataclass(frozen=True, slots=True)
class PreviewPixels:
    """A decoded preview of the first image of a batch: (H, W, 3) uint8 RGB, longest side <= max_size.

    ``method`` is the decoder that really ran (``auto`` resolved); ``source`` says whether it showed
    the predicted final image (``x0``) or the current noisy ``latents``.
    """

    pixels: npt.NDArray[np.uint8]
    method: str
    source: str

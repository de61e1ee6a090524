"""Tiny random-weight edit models for the demo bundle (``demo_model``), in diffusers' layout:

``demo-flux1-kontext``: FLUX.1 Kontext's shape (``FluxKontextPipeline``: FLUX.1 dev's modules, the
reference image's latents beside the noise in the transformer's sequence), one reference image.

Like the other demos they make pictures of noise, but the reference image reaches the pixels: a job
with another reference image makes another image (``tests/engine/test_edit.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

DEMO_FLUX1_KONTEXT = "demo-flux1-kontext"


def write_demo_flux1_kontext(models: Path, seed: int) -> None:
    from diffusers import FluxKontextPipeline

    from sdworker.engine.demo_flow import build_demo_flux1_components

    pipe: Any = FluxKontextPipeline(**build_demo_flux1_components(seed), image_encoder=None, feature_extractor=None)
    pipe.save_pretrained(models / DEMO_FLUX1_KONTEXT, safe_serialization=True)


def write_demo_edit_models(models: Path, seed: int) -> None:
    """Every edit model of the bundle (layout in the module docstring)."""
    write_demo_flux1_kontext(models, seed)

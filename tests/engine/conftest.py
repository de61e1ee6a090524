"""Engine fixtures: one loaded demo engine and diffusers' own reference pipelines, per session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sdworker.engine.diffusers_engine import DiffusersEngine
from sdworker.settings import Settings


@pytest.fixture(scope="session")
def demo_engine(demo_cache_dir: Path) -> DiffusersEngine:
    engine = DiffusersEngine(Settings(model="demo", cache_dir=demo_cache_dir, device="cpu"))
    engine.load()
    return engine


@pytest.fixture(scope="session")
def reference_pipelines(demo_model_dir: Path) -> dict[str, Any]:
    """diffusers' own pipelines, each loaded on its own from the demo folder (nothing of ours involved)."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline, StableDiffusionPipeline

    pipes = {
        "txt2img": StableDiffusionPipeline.from_pretrained(demo_model_dir, safety_checker=None),
        "img2img": StableDiffusionImg2ImgPipeline.from_pretrained(demo_model_dir, safety_checker=None),
        "inpaint": StableDiffusionInpaintPipeline.from_pretrained(demo_model_dir, safety_checker=None),
    }
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


@pytest.fixture(scope="session")
def demo_bundle(demo_cache_dir: Path) -> Path:
    """The demo bundle: models/{demo-sd15,demo-sdxl}, loras/, embeddings/ (see engine/demo_model.py)."""
    from sdworker.engine.demo_model import DEMO_VERSION

    return demo_cache_dir / DEMO_VERSION

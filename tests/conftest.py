"""Shared fixtures: the demo model, built once per test session into a temporary cache.

``demo_cache_dir`` is a cache folder in which ``--model demo`` (``Settings(cache_dir=...)``) resolves
to the already-built model; ``demo_model_dir`` is that model's diffusers folder (it also holds
``demo.safetensors`` and ``taesd/``). Tests never touch the user's ~/.cache and never download.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before anything imports huggingface_hub: a test that tries to download must fail, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def pytest_configure(config: pytest.Config) -> None:
    # CI has 2 cores; more torch threads than cores only adds contention. Only if torch is around and
    # only for this process (the live-server tests' subprocesses read SDWORKER_* settings, not this).
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def demo_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sdworker.engine.demo_model import ensure_demo_model

    cache_dir = tmp_path_factory.mktemp("sdworker-cache")
    ensure_demo_model(cache_dir)
    return cache_dir


@pytest.fixture(scope="session")
def demo_model_dir(demo_cache_dir: Path) -> Path:
    from sdworker.engine.demo_model import ensure_demo_model

    return ensure_demo_model(demo_cache_dir)

"""Shared fixtures: the demo model, built once per test session into a temporary cache.

``demo_cache_dir`` is a cache folder in which ``--model demo`` (``Settings(cache_dir=...)``) resolves
to the already-built model; ``demo_model_dir`` is that model's diffusers folder (it also holds
``demo.safetensors`` and ``taesd/``). Tests never touch the user's ~/.cache and never download.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.redis_server import RedisServer

# Before anything imports huggingface_hub: a test that tries to download must fail, not hang.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# One CPU thread for torch, here and in the servers the live tests start (they inherit the variable).
# The test models are tiny (64 px): a second thread gains nothing, and when the CPU is shared (CI, other
# test processes) OpenMP's spinning threads fight each other - measured on 2 busy cores, the engine's
# seed tests took 3.5 s with one thread and 285 s with two. Set OMP_NUM_THREADS yourself to override.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", os.environ["OMP_NUM_THREADS"])


def pytest_configure(config: pytest.Config) -> None:
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))


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


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One real redis-server per test run (tests separate their keys with a prefix each)."""
    if not RedisServer.available():
        pytest.skip("redis-server is not installed (make test installs it with apt-get)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        yield server
    finally:
        server.stop()

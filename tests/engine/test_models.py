"""What ``--model``, ``--device`` and ``--dtype`` resolve to, without loading weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from sdworker.engine.demo_model import CHECKPOINT_NAME, DEMO_VERSION
from sdworker.engine.models import resolve_device, resolve_source
from sdworker.errors import ModelError, UnsafeCheckpoint
from sdworker.settings import Settings


def test_demo_resolves_to_the_cached_build(demo_cache_dir: Path, demo_model_dir: Path) -> None:
    source = resolve_source(Settings(model="demo", cache_dir=demo_cache_dir))
    assert (source.kind, Path(source.location), source.is_demo) == ("folder", demo_model_dir, True)


def test_paths_by_kind(demo_model_dir: Path, tmp_path: Path) -> None:
    assert resolve_source(Settings(model=str(demo_model_dir))).kind == "folder"
    assert resolve_source(Settings(model=str(demo_model_dir / CHECKPOINT_NAME))).kind == "single_file"
    pickle = tmp_path / "model.ckpt"
    pickle.write_bytes(b"x")
    assert resolve_source(Settings(model=str(pickle), allow_unsafe_pickle=True)).kind == "pickle"
    assert resolve_source(Settings(model="runwayml/stable-diffusion-v1-5")).kind == "hub"


@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickles_are_refused_by_default(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"model{suffix}"
    path.write_bytes(b"x")
    with pytest.raises(UnsafeCheckpoint, match="--allow-unsafe-pickle"):
        resolve_source(Settings(model=str(path)))


@pytest.mark.parametrize(
    ("name", "message"),
    [("{tmp}/missing", "no such file or folder"), ("{tmp}", "not a diffusers model"),
     ("{tmp}/notes.txt", "not a model file")],
)
def test_bad_paths(tmp_path: Path, name: str, message: str) -> None:
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(ModelError, match=message):
        resolve_source(Settings(model=name.replace("{tmp}", str(tmp_path))))


def test_device_auto_and_overrides() -> None:
    expected = (torch.device("cuda"), torch.float16) if torch.cuda.is_available() else (torch.device("cpu"),
                                                                                          torch.float32)
    assert resolve_device(Settings()) == expected
    assert resolve_device(Settings(device="cpu", dtype="bfloat16")) == (torch.device("cpu"), torch.bfloat16)
    with pytest.raises(ValidationError, match="dtype"):
        Settings(device="cpu", dtype="float8")  # type: ignore[arg-type]  # refused at start, before a load
    with pytest.raises(ValidationError, match="not a device sdworker knows"):
        Settings(device="toaster")  # refused at start too (rbee's names are mapped there)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_cuda_requested_without_cuda() -> None:
    with pytest.raises(ModelError, match="CUDA is not available"):
        resolve_device(Settings(device="cuda"))


def test_a_damaged_demo_cache_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / DEMO_VERSION).mkdir()
    (tmp_path / DEMO_VERSION / "half-written").write_text("x")  # no README.txt: not a finished build
    with pytest.raises(ModelError, match=f"delete a damaged {DEMO_VERSION}"):
        resolve_source(Settings(model="demo", cache_dir=tmp_path))

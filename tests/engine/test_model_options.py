"""Per-model offload from the models folder's ``sdworker.toml``: parsed onto the library's entries,
every mistake refused in one line naming the file and the key, and offload without a CUDA card refused
at start (exit 2) as ``--offload`` is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sdworker.engine.library import ModelLibrary
from sdworker.engine.model_options import OPTIONS_FILE
from sdworker.errors import ModelError
from sdworker.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture()
def models(demo_bundle: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "models"
    folder.mkdir()
    for name in ("demo-sd15", "demo-flux1"):
        (folder / name).symlink_to(demo_bundle / "models" / name)
    return folder


def library(models: Path, text: str, device: str) -> ModelLibrary:
    (models / OPTIONS_FILE).write_text(text, encoding="utf-8")
    return ModelLibrary(Settings(models_dir=str(models), cache_dir=models.parent / "cache", device=device))


def test_a_model_gets_its_own_offload_and_the_others_the_workers(models: Path) -> None:
    found = library(models, '[models."demo-flux1"]\noffload = "sequential"\n', "cuda")
    assert found.model("demo-flux1").offload == "sequential"
    assert found.model("demo-sd15").offload == ""  # no table: the worker's --offload
    on_cpu = library(models, '[models."demo-flux1"]\noffload = "none"\n', "cpu")  # none is fine anywhere
    assert on_cpu.model("demo-flux1").offload == "none"


@pytest.mark.parametrize(("text", "said"), [
    ('[models."demo-flux1"]\noffload = "disk"\n', "models.'demo-flux1'.offload 'disk' is not one of none, model"),
    ('[models."demo-flux1"]\nofload = "model"\n', "models.'demo-flux1'.ofload is not a per-model setting"),
    ('[models."demo-flux2"]\noffload = "model"\n', "models.'demo-flux2' is not a model in the folder"),
    ('[model."demo-flux1"]\noffload = "model"\n', "unknown table 'model'"),
    ('[models."demo-flux1"\n', "not a readable TOML file"),
])
def test_mistakes_are_refused_naming_the_file_and_the_key(models: Path, text: str, said: str) -> None:
    with pytest.raises(ModelError) as caught:
        library(models, text, "cuda")
    assert str(models / OPTIONS_FILE) in caught.value.message and said in caught.value.message
    assert "\n" not in caught.value.message


def test_offload_in_the_file_on_the_cpu_exits_2_with_one_line(models: Path) -> None:
    (models / OPTIONS_FILE).write_text('[models."demo-flux1"]\noffload = "model"\n', encoding="utf-8")
    with pytest.raises(ModelError, match="without a CUDA card"):
        ModelLibrary(Settings(models_dir=str(models), cache_dir=models.parent / "cache", device="cpu"))
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "sdworker", "serve", "--models-dir", str(models), "--device", "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith(f"sdworker: error: --models-dir {models / OPTIONS_FILE}: models.'demo-flux1'.offload")
    assert "--device is 'cpu'" in done.stderr and "CUDA" in done.stderr

"""``sdworker generate`` and ``sdworker demo-model`` from the outside: files, metadata, progress, and
every error as one clear line with a non-zero exit and no traceback."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sdworker.cli import main
from sdworker.engine.demo_model import CHECKPOINT_NAME
from sdworker.imaging.metadata import parse_parameters

from .helpers import half_mask, init_image


def generate(cache: Path, *args: str) -> int:
    return main(["generate", *args, "--cache-dir", str(cache), "--device", "cpu"])


def test_generate_writes_pngs_with_parameters_and_a_progress_bar(
    demo_cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.png"
    code = generate(demo_cache_dir, "a photo of a cat", "--model", "demo", "-o", str(out), "--steps", "3",
                    "--width", "64", "--height", "64", "--seed", "1234", "--scheduler", "euler_a",
                    "--negative", "blurry", "--n", "3", "--guidance", "6.5")
    captured = capsys.readouterr()
    assert code == 0
    paths = [tmp_path / f"out-{i}.png" for i in range(3)]
    assert captured.out.split() == [str(p) for p in paths]
    assert "3/3" in captured.err and "step/s" in captured.err  # tqdm: step count and rate
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            assert image.size == (64, 64)
            info = parse_parameters(image.text["parameters"])  # type: ignore[attr-defined]
        assert info["Prompt"] == "a photo of a cat" and info["Negative prompt"] == "blurry"
        assert (info["Steps"], info["Sampler"], info["CFG scale"]) == ("3", "Euler a", "6.5")
        assert (info["Seed"], info["Size"], info["Model"]) == (str(1234 + i), "64x64", "demo-sd15")


def test_img2img_inpaint_and_previews(demo_cache_dir: Path, tmp_path: Path) -> None:
    init_image(64).save(tmp_path / "init.png")
    half_mask(64).save(tmp_path / "mask.png")
    previews = tmp_path / "previews"
    assert generate(demo_cache_dir, "a cat", "--init-image", str(tmp_path / "init.png"), "--strength", "0.5",
                    "--steps", "4", "--scheduler", "ddim", "-o", str(tmp_path / "i2i.png"), "--quiet",
                    "--preview-dir", str(previews), "--preview-format", "png") == 0
    with Image.open(tmp_path / "i2i.png") as image:
        assert image.size == (64, 64)  # the init image's size
        assert parse_parameters(image.text["parameters"])["Denoising strength"] == "0.5"  # type: ignore[attr-defined]
    written = sorted(p.name for p in previews.iterdir())
    assert written and set(written) <= {"step-001.png", "step-002.png"} and "step-002.png" in written
    assert generate(demo_cache_dir, "a cat", "--init-image", str(tmp_path / "init.png"), "--mask",
                    str(tmp_path / "mask.png"), "--steps", "2", "--strength", "1", "-o", str(tmp_path / "inp.png"),
                    "--quiet") == 0
    assert (tmp_path / "inp.png").is_file()


def test_single_file_and_an_allowed_pickle_give_the_folders_pixels(
    demo_model_dir: Path, demo_cache_dir: Path, tmp_path: Path
) -> None:
    common = ["a cat", "--steps", "2", "--width", "64", "--height", "64", "--seed", "5", "--quiet"]
    assert generate(demo_cache_dir, *common, "--model", str(demo_model_dir), "-o", str(tmp_path / "a.png")) == 0
    assert generate(demo_cache_dir, *common, "--model", str(demo_model_dir / CHECKPOINT_NAME), "--model-config",
                    str(demo_model_dir), "-o", str(tmp_path / "b.png")) == 0
    ckpt = tmp_path / "demo.ckpt"
    torch.save({"state_dict": load_file(demo_model_dir / CHECKPOINT_NAME)}, ckpt, pickle_protocol=2)
    assert generate(demo_cache_dir, *common, "--model", str(ckpt), "--allow-unsafe-pickle", "--model-config",
                    str(demo_model_dir), "-o", str(tmp_path / "c.png")) == 0
    a, b, c = (np.asarray(Image.open(tmp_path / name)) for name in ("a.png", "b.png", "c.png"))
    assert np.array_equal(a, b) and np.array_equal(a, c)


class _RunsCode:
    """A pickle that runs code when unpickled the unsafe way: it would create a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return (Path.write_text, (str(self.marker), "pwned"))  # type: ignore[return-value]


def test_an_allowed_pickle_is_still_loaded_with_weights_only(
    demo_model_dir: Path, demo_cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "marker.txt"
    evil = tmp_path / "evil.ckpt"
    evil.write_bytes(pickle.dumps({"state_dict": _RunsCode(marker)}, protocol=2))
    code = generate(demo_cache_dir, "x", "--model", str(evil), "--allow-unsafe-pickle", "--model-config",
                    str(demo_model_dir), "-o", str(tmp_path / "o.png"), "--quiet")
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert not marker.exists()
    assert err.startswith("sdworker: error: model ") and "\n" not in err


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--model", "{tmp}/missing.safetensors"], "no such file or folder"),
        (["--model", "{tmp}"], "not a diffusers model (no model_index.json)"),
        (["--model", "{tmp}/old.ckpt"], "--allow-unsafe-pickle"),
        (["--scheduler", "warp_drive"], "unknown scheduler 'warp_drive'; valid: euler, euler_a"),
        (["--width", "100"], "--width 100: must be a positive multiple of 8"),
        (["--init-image", "{tmp}/not-an-image.png"], "not a readable image"),
        (["--init-image", "{tmp}/missing.png"], "cannot read"),
        (["--init-image", "{tmp}/init.png", "--mask", "{tmp}/small-mask.png"], "must be the same size"),
        (["--mask", "{tmp}/small-mask.png"], "--mask needs --init-image"),
        (["-o", "{tmp}/out.jpg"], "name the file .png"),
    ],
)
def test_errors_are_one_clear_line(
    demo_cache_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    (tmp_path / "old.ckpt").write_bytes(b"not even read")
    (tmp_path / "not-an-image.png").write_bytes(b"hello")
    init_image(64).save(tmp_path / "init.png")
    half_mask(32).save(tmp_path / "small-mask.png")
    filled = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "-o" not in filled:
        filled += ["-o", str(tmp_path / "out.png")]
    code = generate(demo_cache_dir, "a cat", "--steps", "2", "--quiet", *filled)
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("sdworker: error: ") and expected in lines[0]
    assert "Traceback" not in captured.err
    assert not list(tmp_path.glob("out*.png"))


def test_the_installed_command_exits_non_zero_without_a_traceback(tmp_path: Path) -> None:
    env = {**os.environ, "SDWORKER_CACHE_DIR": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, "-m", "sdworker", "generate", "a cat", "--model", str(tmp_path / "nope")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"sdworker: error: model {tmp_path / 'nope'}: no such file or folder"

"""The demo model: layout, size, identical bytes on every build, the single-file checkpoint, the cache."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderTiny, StableDiffusionPipeline

from sdworker.cli import main
from sdworker.engine import demo_model
from sdworker.engine.demo_model import CHECKPOINT_NAME, DEMO_VERSION, TAESD_DIR, ensure_demo_model


def _digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_layout_is_diffusers_sd1_plus_checkpoint_and_taesd(demo_model_dir: Path) -> None:
    import json

    index = json.loads((demo_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None]
    assert index["feature_extractor"] == [None, None]
    assert index["requires_safety_checker"] is False
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (demo_model_dir / sub).is_dir(), sub
    assert (demo_model_dir / "tokenizer" / "vocab.json").is_file()
    assert (demo_model_dir / "tokenizer" / "merges.txt").is_file()
    assert (demo_model_dir / CHECKPOINT_NAME).is_file()
    size = sum(p.stat().st_size for p in demo_model_dir.rglob("*") if p.is_file())
    assert size < 20 * 1024 * 1024
    taesd = AutoencoderTiny.from_pretrained(demo_model_dir / TAESD_DIR)
    assert taesd.config.latent_channels == 4


def test_cli_writes_identical_bytes_every_time(demo_cache_dir: Path, tmp_path: Path) -> None:
    target = tmp_path / "again"
    assert main(["demo-model", str(target)]) == 0
    assert _digests(target) == _digests(demo_cache_dir / DEMO_VERSION)
    assert {p.relative_to(target).as_posix() for p in target.glob("*/*")} >= {
        "models/demo-sd15", "models/demo-sdxl", "loras/demo-peft.safetensors", "loras/demo-kohya.safetensors",
        "loras/demo-xl-peft.safetensors", "embeddings/demo-embedding.safetensors",
    }


def test_cli_refuses_a_non_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "x.txt").write_text("mine")
    assert main(["demo-model", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not an empty folder" in err and "Traceback" not in err


def test_tokenizer_is_clip_style(demo_model_dir: Path) -> None:
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(demo_model_dir / "tokenizer")
    ids = tok("A photo of a Cat", padding="max_length", max_length=77).input_ids
    assert len(ids) == 77
    assert ids[0] == tok.convert_tokens_to_ids("<|startoftext|>")
    assert tok.convert_tokens_to_ids("<|endoftext|>") in ids
    assert max(ids) < tok.vocab_size + len(tok.added_tokens_decoder) + 1
    assert tok("a cat").input_ids == tok("A CAT").input_ids  # CLIP lower-cases


def test_single_file_checkpoint_equals_folder(demo_model_dir: Path) -> None:
    folder = StableDiffusionPipeline.from_pretrained(demo_model_dir, safety_checker=None)
    single = StableDiffusionPipeline.from_single_file(
        str(demo_model_dir / CHECKPOINT_NAME), config=str(demo_model_dir), safety_checker=None
    )
    for name in ("unet", "vae", "text_encoder"):
        a, b = getattr(folder, name).state_dict(), getattr(single, name).state_dict()
        assert a.keys() == b.keys(), name
        unequal = [k for k in a if not torch.equal(a[k], b[k])]
        assert not unequal, f"{name}: {unequal[:3]}"

    def run(pipe: StableDiffusionPipeline) -> torch.Tensor:
        out = pipe("a cat", num_inference_steps=2, width=64, height=64, output_type="pt",
                   generator=torch.Generator("cpu").manual_seed(3))
        return out.images  # type: ignore[no-any-return]

    assert torch.equal(run(folder), run(single))


def test_ensure_reuses_a_built_model(demo_cache_dir: Path, demo_model_dir: Path) -> None:
    assert demo_model_dir == demo_cache_dir / DEMO_VERSION / "models" / "demo-sd15"
    before = (demo_model_dir / "model_index.json").stat().st_mtime_ns
    assert ensure_demo_model(demo_cache_dir) == demo_model_dir
    assert (demo_model_dir / "model_index.json").stat().st_mtime_ns == before


def test_ensure_tolerates_losing_the_rename_race(
    demo_cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process finishes first: our rename fails, we use theirs and leave no staging folder."""
    cache = tmp_path / "cache"
    bundle = demo_cache_dir / DEMO_VERSION

    def build_while_another_process_wins(directory: Path) -> Path:
        shutil.copytree(bundle, directory, dirs_exist_ok=True)
        shutil.copytree(bundle, cache / DEMO_VERSION)  # the other process's rename lands now
        return directory

    monkeypatch.setattr(demo_model, "write_demo_bundle", build_while_another_process_wins)
    assert ensure_demo_model(cache) == cache / DEMO_VERSION / "models" / "demo-sd15"
    assert sorted(p.name for p in cache.iterdir()) == [DEMO_VERSION]

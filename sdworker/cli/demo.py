"""``sdworker demo-model DIR``: write the tiny random-weight demo bundle (see engine/demo_model.py):
DIR/models/{demo-sd15,demo-sdxl}, DIR/loras/, DIR/embeddings/."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sdworker.errors import ModelError


def run_demo_model(args: argparse.Namespace) -> int:
    from sdworker.cli.library_noise import quiet_libraries
    from sdworker.engine.demo_model import CHECKPOINT_NAME, DEMO_SD15, MODELS_DIR, write_demo_bundle

    target = Path(args.dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ModelError(f"{target}: exists and is not an empty folder; choose a new one")
    quiet_libraries()  # the demo's random configs trip the libraries' advice for real models
    started = time.perf_counter()
    write_demo_bundle(target)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(
        f"wrote the demo bundle to {target} ({size / 1e6:.1f} MB, {time.perf_counter() - started:.1f} s); serve it "
        f"with --models-dir {target / MODELS_DIR} --lora-dir {target / 'loras'} --embeddings-dir "
        f"{target / 'embeddings'}; single-file checkpoint: {target / MODELS_DIR / DEMO_SD15 / CHECKPOINT_NAME}",
        file=sys.stderr,
    )
    print(target)
    return 0

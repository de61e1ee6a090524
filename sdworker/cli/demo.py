"""``sdworker demo-model DIR``: write the tiny random-weight demo model (see engine/demo_model.py)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from sdworker.errors import ModelError


def run_demo_model(args: argparse.Namespace) -> int:
    from sdworker.engine.demo_model import CHECKPOINT_NAME, write_demo_model

    target = Path(args.dir)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ModelError(f"{target}: exists and is not an empty folder; choose a new one")
    started = time.perf_counter()
    write_demo_model(target)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
    print(
        f"wrote the demo model to {target} ({size / 1e6:.1f} MB, {time.perf_counter() - started:.1f} s); "
        f"single-file checkpoint: {target / CHECKPOINT_NAME}",
        file=sys.stderr,
    )
    print(target)
    return 0

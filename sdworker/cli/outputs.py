"""Where ``sdworker generate`` writes its images, locally or from a remote worker alike."""

from __future__ import annotations

from pathlib import Path


def output_paths(output: Path, count: int) -> list[Path]:
    """``out.png`` for one image; ``out-0.png``, ``out-1.png``, ... for several."""
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i}{output.suffix}") for i in range(count)]

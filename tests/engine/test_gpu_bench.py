"""``bench/gpu.py --tiny`` on the CPU: the GPU table's script runs end to end on demo-size models and
writes its JSON and Markdown; ``--only`` reruns a row and keeps the others; a row that needs CUDA says
so instead of failing. (The speed figures themselves are the GPU run's, not asserted here.)"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run(tmp_path: Path, *rows: str) -> dict[str, object]:
    out_json, out_md = tmp_path / "gpu.json", tmp_path / "gpu.md"
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu.py"), "--tiny", "--device", "cpu", "--json", str(out_json),
         "--markdown", str(out_md), "--only", *rows],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert out_md.read_text().count("\n| ") >= 1 + len(json.loads(out_json.read_text())["rows"])
    return json.loads(out_json.read_text())  # type: ignore[no-any-return]


def test_tiny_rows_write_json_and_markdown_and_only_keeps_the_others(tmp_path: Path) -> None:
    first = run(tmp_path, "sd15-eager", "flux-dev-fp8")
    rows = first["rows"]
    assert isinstance(rows, dict)
    sd15 = rows["sd15-eager"]
    assert sd15["engine_it_s"] > 0 and sd15["diffusers_it_s"] > 0 and sd15["taesd_ms"] > 0
    assert rows["flux-dev-fp8"] == {**rows["flux-dev-fp8"], "skipped": "fp8 needs CUDA"}
    second = run(tmp_path, "flux-dev-bf16")
    assert set(second["rows"]) == {"sd15-eager", "flux-dev-fp8", "flux-dev-bf16"}  # type: ignore[arg-type]
    assert second["rows"]["flux-dev-bf16"]["engine_images_s"] > 0  # type: ignore[index]

"""bench/engine.py runs end to end on the demo model and writes the numbers it prints."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_engine_bench_smoke(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_engine", ROOT / "bench" / "engine.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "engine.json"
    assert module.main(["--arch", "demo", "--steps", "2", "--rounds", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["arch"] == "demo" and result["device"] == "cpu"
    assert len(result["direct_s_per_step"]) == len(result["engine_s_per_step"]) == 1
    assert result["overhead_ratio"] > 0
    assert 0 <= result["engine_python_us_per_step"] < 1000  # microseconds, not milliseconds

"""``bench/hostile.py`` end to end at toy size: its own real server (fake engine, keys file), a few of
the #20 cases (crafted images at every entry point with one mutated file per format, seeds, bad text,
a short key on SIGHUP, tokens in the access log), each answered as it should and nothing left behind.
No timing is asserted; the bench reports it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parents[2]
CASES = ["crafted images, 8 entry points", "seeds >= 2^64", "surrogates, NUL, clip 1e400", "short key on SIGHUP",
         "token in access log"]


def test_hostile_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "hostile.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "hostile.py"), "--only", "crafted,seeds,surrogates,SIGHUP,token",
         "--mutations", "1", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [phase["name"] for phase in report["phases"]] == CASES
    for phase in report["phases"]:
        assert phase["tried"] > 0 and phase["misbehaved"] == 0, phase
    crafted = report["phases"][0]
    assert crafted["tried"] == 8 * (4 + 3)  # 8 entry points x (4 crafted PNGs + 1 mutated file per format)
    assert sum(n for code, n in crafted["answers"].items() if code in ("400", "413", "422")) >= 8 * 4
    assert report["alive"] and "401" in report["phases"][3]["answers"]

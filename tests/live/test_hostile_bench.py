"""``bench/hostile.py`` end to end at toy size: its own real server (fake engine, keys file), a few of
the #20 cases (crafted images at every entry point with one mutated file per format, seeds, bad text,
a short key on SIGHUP, tokens in the access log), each answered as it should and nothing left behind.
No timing is asserted; the bench reports it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parents[2]
CASES = [
    "crafted images, 8 entry points",
    "seeds >= 2^64",
    "surrogates, NUL, clip 1e400",
    "short key on SIGHUP",
    "token in access log",
    "SIGTERM, 2 s grace, 20 streams",
]


def test_hostile_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "hostile.json"
    run = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "hostile.py"),
            "--only",
            "crafted,seeds,surrogates,SIGHUP,token,SIGTERM",
            "--mutations",
            "1",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
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
    stopped = report["phases"][5]  # its own server: every stream ended, then the process exited
    assert stopped["answers"] == {"stream ended": 20, "exit 0": 1}, stopped
    assert stopped["streams_ended_seconds"] <= stopped["exit_seconds"], stopped


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_hostile_bench_redis_faults(tmp_path: Path) -> None:
    """The Redis case on its own fleet (api + demo worker + redis-server killed and restarted)."""
    out = tmp_path / "hostile.json"
    run = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "hostile.py"), "--only", "Redis", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    (phase,) = json.loads(out.read_text())["phases"]
    assert phase["name"] == "Redis killed and restarted" and phase["misbehaved"] == 0, phase
    assert phase["answers"].get("503", 0) > 0  # the outage was seen, and answered 503 with Retry-After
    assert phase["first_after_restart"] == 200 and phase["jobs_pending_at_kill"] > 0, phase

"""``bench/fair_redis.py`` runs end to end at toy size (its own redis-server) and writes what it prints;
the newest job's position it reports is the one the rule gives (no timing asserted)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.engine.test_bench import load_bench


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_fair_redis_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "fair.json"
    assert load_bench("fair_redis").main(["--queued", "40", "--owners", "1,4", "--claims", "2",
                                          "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["fair_redis"]
    # (a worker may also run the script on an entry whose job another claim already started: a skip)
    assert [(r["queued"], r["owners"]) for r in rows] == [(40, 1), (40, 4)] and all(r["claims"] >= 2 for r in rows)
    # Jobs 9, 19, 29, 39 are priority 5; the 2 claims start 9 and 19, and 38 jobs wait. The one asked
    # (job 38, priority 0) is last: with 1 owner its last job; with 4 it is owner 2's tenth, and only
    # owner 0 (never started either, older) has a tenth job before it in that round.
    assert [r["newest_position"] for r in rows] == [38, 38], rows

"""``bench/store.py`` runs end to end at toy sizes on every store and writes the numbers it prints
(no timing asserted: speed lives in the benchmark)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.engine.test_bench import load_bench
from tests.redis_server import RedisServer


def test_store_bench_smoke(tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "store.json"
    argv = ["--submits", "5", "--events", "10", "--soak", "10", "--soak-events", "2", "--max-results", "3",
            "--redis", redis_server.url, "--json", str(out)]
    assert load_bench("store").main(argv) == 0
    results = json.loads(out.read_text())["results"]
    assert [r["store"] for r in results] == ["memory", "sqlite", "redis"]
    assert all(len(r["soak"]) == 5 for r in results)
    assert "| sqlite |" in capsys.readouterr().out

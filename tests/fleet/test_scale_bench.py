"""``bench/scale.py`` end to end at toy size (its own redis-server, api nodes and workers): it keeps
running and writes what it prints. No timing is asserted; the benchmark reports speed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.engine.test_bench import load_bench

pytestmark = pytest.mark.live


@pytest.mark.timeout(600)  # eight processes start (redis, 3 api nodes, serve, 3 workers): minutes on a busy machine
@pytest.mark.skipif(shutil.which("redis-server") is None, reason="redis-server is not installed")
def test_scale_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    argv = ["--jobs", "2", "--steps", "2", "--size", "64", "--watchers", "20", "--latency-steps", "4",
            "--depth", "100", "--depth-probe", "20", "--skip", "batching", "--client-processes", "2"]
    assert load_bench("scale").main([*argv, "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    throughput = result["throughput"]
    assert sum(throughput["workers_1"]["jobs_by_worker"].values()) == 2
    assert sum(throughput["workers_2"]["jobs_by_worker"].values()) == 2 and throughput["ratio"] > 0
    assert set(result["latency"]) == {"redis", "memory"}
    assert all(row["events"] >= 4 for row in result["latency"].values())
    watchers = result["watchers"]
    assert watchers["complete_then_end"] == 20 and watchers["watcher_errors"] == 0, watchers
    assert watchers["health_samples"] > 0 and result["errors"] == []
    depth = result["depth"]
    assert depth["depth"] == 100 and depth["submits_probed"] == 20 and depth["claims"] >= 1
    assert depth["memory_bytes_per_job"] > 0
    assert depth["redis_commands_per_submit"]["evalsha"] >= 1

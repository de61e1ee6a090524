"""What the fleet's fair claim order costs in Redis (issues 21 and 24), by queue depth and owners.

For each (queued jobs, owners): the queue is filled through the ``SUBMIT`` script (jobs spread round
robin over the owners, a tenth of them at priority 5), then a real ``RedisJobSource`` claims
``--claims`` jobs and the API side's ``POSITION`` script asks the newest job's place (the worst case:
it adds up every owner at its priority). Times are Redis's own (the slow log at 0 us: each script's
run inside Redis, while it serves no other client), not round trips.

Starts its own redis-server on a free port.

    .venv/bin/python bench/fair_redis.py
    .venv/bin/python bench/fair_redis.py --queued 1000,10000 --owners 1,100,1000

Prints a table and writes JSON (``--json``, default bench/results/fair_redis.json).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import redis  # noqa: E402

from sdworker.domain.request import GenerationRequest  # noqa: E402
from sdworker.engine.fake import FakeEngine  # noqa: E402
from sdworker.jobs.metrics import ServiceMetrics  # noqa: E402
from sdworker.jobs.spec import JobSpec  # noqa: E402
from sdworker.previews.options import PreviewOptions  # noqa: E402
from sdworker.settings import Settings  # noqa: E402
from sdworker.stores.redis import fair, scripts  # noqa: E402
from sdworker.stores.redis.codec import batch_key_text  # noqa: E402
from sdworker.stores.redis.keys import Keys  # noqa: E402
from sdworker.stores.redis.source import RedisJobSource  # noqa: E402


def start_redis(folder: Path) -> tuple[subprocess.Popen[bytes], str]:
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    process = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(folder),
                                "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.monotonic() + 20
    while True:
        try:
            redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
            return process, url
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def fill(client: redis.Redis, keys: Keys, model: str, queued: int, owners: int) -> list[str]:
    """``queued`` jobs through the SUBMIT script, pipelined (what an API node runs per job)."""
    submit = client.register_script(scripts.SUBMIT)
    request = GenerationRequest("a lighthouse", num_inference_steps=2, width=64, height=64, seed=1, model=model)
    ids = []
    for start in range(0, queued, 500):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(queued, start + 500)):
            job_id = uuid.uuid4().hex
            priority = 5 if i % 10 == 9 else 0
            spec = JobSpec(job_id, request, PreviewOptions(), time.time(), owner=f"owner{i % owners}",
                           priority=priority)
            submit(keys=[keys.job(job_id), keys.events(job_id), keys.queued, keys.queued_model(model),
                         keys.queue(model), keys.jobs, keys.models],
                   args=[job_id, json.dumps(spec.to_dict()), spec.owner, model, spec.created_at, queued + 10, 2,
                         4096, 0, batch_key_text(request), priority, "", 0], client=pipe)
            ids.append(job_id)
        pipe.execute()
    return ids


async def claims(url: str, prefix: str, model: str, count: int) -> None:
    settings = Settings(model=model, redis_url=url, redis_prefix=prefix, lease_heartbeat_seconds=30.0,
                        claim_idle_seconds=60.0)
    source = RedisJobSource(settings, metrics=ServiceMetrics())
    await source.set_engine(FakeEngine().info, state="ready")
    try:
        for _ in range(count):
            leases = []
            while not leases:
                leases = await source.claim([model], wait_seconds=0.5)
            for lease in leases:
                await lease.complete((b"png",), (1,), 64, 64)
    finally:
        source.stop_claiming()
        await source.close()


def script_times(client: redis.Redis) -> dict[str, list[float]]:
    shas = {hashlib.sha1(text.encode()).hexdigest(): name
            for name, text in (("submit", scripts.SUBMIT), ("claim", scripts.CLAIM), ("position", fair.POSITION))}
    times: dict[str, list[float]] = {}
    for entry in client.slowlog_get(1_000_000):
        command = entry["command"]
        words = (command.decode(errors="replace") if isinstance(command, bytes) else str(command)).split()
        if len(words) > 1 and words[0].upper() == "EVALSHA" and words[1] in shas:
            times.setdefault(shas[words[1]], []).append(entry["duration"] / 1000.0)  # us -> ms
    return times


def measure(url: str, queued: int, owners: int, count: int) -> dict[str, Any]:
    client = redis.Redis.from_url(url)
    keys = Keys(f"fair{uuid.uuid4().hex[:6]}")
    model = FakeEngine().model
    client.config_set("slowlog-log-slower-than", 0)
    client.config_set("slowlog-max-len", 1_000_000)
    client.slowlog_reset()
    ids = fill(client, keys, model, queued, owners)
    submits = script_times(client).get("submit", [])
    client.slowlog_reset()
    asyncio.run(claims(url, keys.prefix, model, count))
    position = client.register_script(fair.POSITION)
    newest = ids[-2]  # priority 0: behind every priority-5 job and every owner at its level
    shown = [position(keys=[keys.job(newest)], args=[newest]) for _ in range(count)]
    times = script_times(client)
    client.config_set("slowlog-log-slower-than", 10_000)
    client.close()
    claimed, asked = times.get("claim", []), times.get("position", [])
    submits.sort()
    return {"queued": queued, "owners": owners, "submit_p50_ms": statistics.median(submits),
            "submit_p99_ms": submits[int(len(submits) * 0.99) - 1], "submit_max_ms": max(submits),
            "claims": len(claimed), "claim_p50_ms": statistics.median(claimed),
            "claim_max_ms": max(claimed), "position_p50_ms": statistics.median(asked),
            "position_max_ms": max(asked), "newest_position": int(shown[-1])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queued", default="1000,10000")
    parser.add_argument("--owners", default="1,100,1000")
    parser.add_argument("--claims", type=int, default=20)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "fair_redis.json")
    args = parser.parse_args(argv)
    process, url = start_redis(Path(tempfile.mkdtemp(prefix="sdw-fair-")))
    try:
        rows = [measure(url, int(q), int(o), args.claims) for q in args.queued.split(",")
                for o in args.owners.split(",")]
    finally:
        process.terminate()
        process.wait(10)
    print("\nfair claim order in Redis (script time inside Redis, slow log)")
    print(f"{'queued':>7} {'owners':>7} {'submit p50':>11} {'submit p99':>11} {'claim p50':>10} {'claim max':>10} "
          f"{'position p50':>13} {'position max':>13}")
    for r in rows:
        print(f"{r['queued']:>7} {r['owners']:>7} {r['submit_p50_ms']:>8.3f} ms {r['submit_p99_ms']:>8.3f} ms "
              f"{r['claim_p50_ms']:>7.3f} ms {r['claim_max_ms']:>7.3f} ms {r['position_p50_ms']:>10.3f} ms "
              f"{r['position_max_ms']:>10.3f} ms")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"fair_redis": rows}, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

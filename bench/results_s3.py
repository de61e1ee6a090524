"""What ``--results-s3`` changes in a Redis fleet: Redis memory per finished job, and the cost of a
job's end and of an image read, with the PNGs in Redis (the default) and in an S3-compatible bucket.

One run: a real redis-server and moto's standalone S3 server (subprocesses on free ports; boto3 talks
HTTP to it, as to AWS), the Redis job service and source in this process. ``--jobs`` jobs are
submitted, claimed and completed with a random ``--size`` px PNG (noise: it does not compress, so the
byte counts are the worst case), then each image is read back once through the service. Reported:
Redis ``used_memory`` growth and the ``MEMORY USAGE`` of the image keys per job, ``complete`` (the
worker's upload plus the finish script) and ``image`` (the API node's read) latencies, p50/p99.

    .venv/bin/python bench/results_s3.py                  # 100 jobs of 256 px
    .venv/bin/python bench/results_s3.py --jobs 200 --size 512

Prints a table and writes JSON (``--json``, default bench/results/results_s3.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
import httpx  # noqa: E402
import redis  # noqa: E402

from bench.store import RedisProcess, claim, close, draft, open_store, percentile, png  # noqa: E402

BUCKET = "bench-results"


class MotoProcess:
    def __init__(self) -> None:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(self.endpoint, timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("moto.server did not start")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


async def run(mode: str, redis_url: str, jobs: int, size: int) -> dict[str, Any]:
    settings: dict[str, Any] = {"result_ttl_seconds": 3600.0, "max_results": 100_000}
    if mode == "s3":
        settings["results_s3"] = f"s3://{BUCKET}/bench-{int(time.time() * 1000)}"
    folder = Path(tempfile.mkdtemp(prefix="sdw-bench-s3-"))
    service, source, _ = await open_store("redis", folder, redis_url, **settings)
    db = redis.Redis.from_url(redis_url)
    prefix = service._keys.prefix  # type: ignore[attr-defined]
    before = int(db.info("memory")["used_memory"])
    images = [png(n, size) for n in range(min(jobs, 16))]  # a few distinct PNGs, reused
    complete_ms: list[float] = []
    ids = []
    for n in range(jobs):
        view = await service.submit(draft(n))
        ids.append(view.job_id)
        lease = await claim(source, "redis")
        image = images[n % len(images)]
        started = time.perf_counter()
        assert await lease.complete((image,), (n,), size, size)
        complete_ms.append((time.perf_counter() - started) * 1000)
    after = int(db.info("memory")["used_memory"])
    key_bytes = sum(int(db.memory_usage(f"{prefix}:job:{job_id}:img:0") or 0) for job_id in ids)
    read_ms = []
    for job_id in ids:
        started = time.perf_counter()
        await service.image(job_id)
        read_ms.append((time.perf_counter() - started) * 1000)
    await close(service, source)
    db.close()
    return {
        "mode": mode, "jobs": jobs, "png_bytes": sum(len(i) for i in images) // len(images),
        "redis_growth_per_job_bytes": (after - before) // jobs, "image_key_bytes_per_job": key_bytes // jobs,
        "complete_ms_p50": percentile(complete_ms, 0.5), "complete_ms_p99": percentile(complete_ms, 0.99),
        "image_ms_p50": percentile(read_ms, 0.5), "image_ms_p99": percentile(read_ms, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--size", type=int, default=256, help="PNG side in px (random noise)")
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "results_s3.json")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="sdw-bench-redis-"))
    redis_process = RedisProcess(folder)
    moto = MotoProcess()
    os.environ.update(AWS_ENDPOINT_URL=moto.endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1")
    try:
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        rows = [asyncio.run(run(mode, redis_process.url, args.jobs, args.size)) for mode in ("redis", "s3")]
    finally:
        moto.stop()
        redis_process.stop()
    header = ("PNGs in", "jobs", "PNG B", "Redis +B/job", "img key B/job", "complete p50/p99 ms", "image p50/p99 ms")
    print(" | ".join(header))
    print(" | ".join("---" for _ in header))
    for row in rows:
        print(" | ".join(str(x) for x in (
            "Redis" if row["mode"] == "redis" else "S3 (moto)", row["jobs"], row["png_bytes"],
            row["redis_growth_per_job_bytes"], row["image_key_bytes_per_job"],
            f"{row['complete_ms_p50']:.1f} / {row['complete_ms_p99']:.1f}",
            f"{row['image_ms_p50']:.1f} / {row['image_ms_p99']:.1f}",
        )))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"size": args.size, "rows": rows}, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

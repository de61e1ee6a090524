"""What the integrator contract costs (issue 24), in one run.

1. **fair queue**: the one-process queue with N queued jobs from K owners (round-robin by owner): the
   time of ``get`` (the runner's claim), of ``position`` of the newest job (every job view of a queued
   job asks it) and of ``job_ids`` (the positions published after each start).
2. **webhooks**: M webhooks through the outbox (memory and SQLite stores) to a real HTTP receiver on
   this machine: deliveries per second and the delay from "owed" to "delivered" (p50/p99); the SQLite
   outbox writes each message and each attempt durably.

    .venv/bin/python bench/integrator.py
    .venv/bin/python bench/integrator.py --queued 100,1000,10000 --webhooks 200

Prints a table and writes JSON (``--json``, default bench/results/integrator.json).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sdworker.domain.request import GenerationRequest  # noqa: E402
from sdworker.jobs.outbox import WebhookOutbox  # noqa: E402
from sdworker.jobs.queue import InMemoryJobQueue  # noqa: E402
from sdworker.jobs.spec import JobSpec  # noqa: E402
from sdworker.jobs.state import JobStatus, JobView  # noqa: E402
from sdworker.previews.options import PreviewOptions  # noqa: E402
from sdworker.settings import Settings  # noqa: E402
from sdworker.stores.memory import MemoryStore  # noqa: E402
from sdworker.stores.sqlite import SqliteStore  # noqa: E402


def spec(index: int, owner: str) -> JobSpec:
    return JobSpec(f"job{index}", GenerationRequest("a lighthouse"), PreviewOptions(), time.time(), owner=owner)


async def fair_queue(queued: int, owners: int) -> dict[str, Any]:
    queue = InMemoryJobQueue(queued + 1)
    for i in range(queued):
        queue.put(queue.reserve(), spec(i, f"owner{i % owners}"))
    newest = f"job{queued - 1}"
    rounds = 20
    started = time.perf_counter()
    for _ in range(rounds):
        queue.position(newest)
    position_ms = (time.perf_counter() - started) * 1000 / rounds
    started = time.perf_counter()
    for _ in range(rounds):
        queue.job_ids()
    ids_ms = (time.perf_counter() - started) * 1000 / rounds
    started = time.perf_counter()
    for _ in range(rounds):
        await queue.get()
    get_ms = (time.perf_counter() - started) * 1000 / rounds
    return {"queued": queued, "owners": owners, "get_ms": get_ms, "position_ms": position_ms, "job_ids_ms": ids_ms}


class Receiver:
    def __init__(self) -> None:
        self.arrived: dict[str, float] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.arrived.setdefault(self.headers["webhook-id"], time.time())
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


async def webhooks(store_name: str, count: int, receiver: Receiver) -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="sdw-bench-")
    store = SqliteStore(Path(folder)) if store_name == "sqlite" else MemoryStore()
    outbox = WebhookOutbox(store, Settings(webhook_allow_private=True, webhook_secret=("bench-secret",)))
    await outbox.start()
    owed: dict[str, float] = {}
    started = time.perf_counter()
    for i in range(count):
        view = JobView(spec=spec(i, "bench"), status=JobStatus.COMPLETED)
        outbox.add(view, receiver.url, "completed")
        for message in store.webhooks(f"job{i}"):
            owed.setdefault(message.message_id, message.created_at)
    ids = list(owed)
    while not all(m in receiver.arrived for m in ids):
        await asyncio.sleep(0.01)
    seconds = time.perf_counter() - started
    await outbox.close()
    store.close()
    delays = sorted((receiver.arrived[m] - owed[m]) * 1000 for m in ids)
    return {"store": store_name, "webhooks": count, "per_second": count / seconds,
            "delay_p50_ms": statistics.median(delays), "delay_p99_ms": delays[int(len(delays) * 0.99) - 1]}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queued", default="100,1000,10000")
    parser.add_argument("--owners", type=int, default=10)
    parser.add_argument("--webhooks", type=int, default=200)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "integrator.json")
    args = parser.parse_args()
    queues = [await fair_queue(int(n), args.owners) for n in args.queued.split(",")]
    print("\nfair queue (round-robin by owner)")
    print(f"{'queued':>8} {'owners':>7} {'get ms':>8} {'position ms':>12} {'job_ids ms':>11}")
    for row in queues:
        print(f"{row['queued']:>8} {row['owners']:>7} {row['get_ms']:>8.3f} {row['position_ms']:>12.3f} "
              f"{row['job_ids_ms']:>11.3f}")
    receiver = Receiver()
    sent = [await webhooks(name, args.webhooks, receiver) for name in ("memory", "sqlite")]
    print("\nwebhooks through the outbox to a local receiver")
    print(f"{'store':>8} {'webhooks':>9} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8}")
    for row in sent:
        print(f"{row['store']:>8} {row['webhooks']:>9} {row['per_second']:>8.1f} {row['delay_p50_ms']:>8.1f} "
              f"{row['delay_p99_ms']:>8.1f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"fair_queue": queues, "webhooks": sent}, indent=2))
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    asyncio.run(main())

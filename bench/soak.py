"""Soak: 500 small jobs through a real ``serve`` process, its resident memory printed every 50.

    .venv/bin/python bench/soak.py                      # the FakeEngine (bench/fake_server.py)
    .venv/bin/python bench/soak.py --demo --jobs 200    # the real demo model (sdworker serve)

Every third job is an img2img with a 256x256 input image (input images must not be kept after the
job), every job is watched over SSE to its end and its PNG fetched; ``--max-results 100`` so the
bound on finished jobs is reached early. Flat RSS after the warm-up is the target: finished jobs, event
histories and input images are let go. Prints a table; writes JSON with ``--json``.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def input_image() -> str:
    buffer = io.BytesIO()
    Image.effect_noise((256, 256), 64).convert("RGB").save(buffer, "PNG")  # noise: a big PNG
    return base64.b64encode(buffer.getvalue()).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=500)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--demo", action="store_true", help="the real demo model instead of the FakeEngine")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {**os.environ, "SDWORKER_PORT": str(port), "SDWORKER_MAX_RESULTS": "100", "OMP_NUM_THREADS": "1"}
    if args.demo:
        command = [sys.executable, "-m", "sdworker", "serve", "--model", "demo"]
    else:
        command = [sys.executable, str(ROOT / "bench" / "fake_server.py")]
    (ROOT / "bench" / "results").mkdir(exist_ok=True)
    with open(ROOT / "bench" / "results" / "soak-server.log", "wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            rows = soak(process, f"http://127.0.0.1:{port}", args.jobs, args.every)
        finally:
            process.terminate()
            process.wait(60)
    print(f"{'jobs':>6} {'RSS MB':>8} {'fds':>5} {'kept':>5} {'s':>6}")
    for row in rows:
        print(f"{row['jobs']:>6} {row['rss_mb']:>8} {row['fds']:>5} {row['kept']:>5} {row['seconds']:>6}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def soak(process: subprocess.Popen[bytes], url: str, jobs: int, every: int) -> list[dict[str, float]]:
    with httpx.Client(base_url=url, timeout=120) as client:
        deadline = time.monotonic() + 300
        while True:
            with contextlib.suppress(httpx.TransportError):
                if client.get("/ready").status_code == 200:
                    break
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the server did not start")
            time.sleep(0.2)
        image = input_image()
        rows = [row(process, client, 0, time.monotonic())]
        start = time.monotonic()
        for index in range(1, jobs + 1):
            body: dict[str, object] = {"prompt": f"soak {index}", "width": 64, "height": 64, "steps": 3,
                                       "seed": index, "preview": {"every": 1, "min_interval_ms": 0}}
            if index % 3 == 0:
                body |= {"operation": "image_transform", "init_image": image, "strength": 0.7, "width": 64,
                         "height": 64}
            job_id = client.post("/v1/jobs", json=body).raise_for_status().json()["job_id"]
            with client.stream("GET", f"/v1/jobs/{job_id}/stream") as stream:
                for _ in stream.iter_lines():
                    pass
            client.get(f"/v1/jobs/{job_id}/image").raise_for_status()
            if index % every == 0:
                rows.append(row(process, client, index, start))
        return rows


def row(process: subprocess.Popen[bytes], client: httpx.Client, jobs: int, start: float) -> dict[str, float]:
    kept = len(client.get("/v1/jobs", params={"limit": 1000}).json()["jobs"])
    return {"jobs": jobs, "rss_mb": round(rss_mb(process.pid), 1), "fds": len(os.listdir(f"/proc/{process.pid}/fd")),
            "kept": kept, "seconds": round(time.monotonic() - start, 1)}


if __name__ == "__main__":
    main()

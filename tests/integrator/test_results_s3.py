"""Outputs as stored assets: ``--results-s3`` against a real S3-compatible HTTP server (moto's standalone
server, a subprocess on a free port; boto3 talks HTTP to it as to AWS, through ``AWS_ENDPOINT_URL``).

- ``sdworker serve --results-s3`` (SQLite): the PNGs land in the bucket, not in the outputs folder; the
  job view's, the webhook's and the OpenAI door's image URLs are presigned GETs that fetch them, with
  ``X-Amz-Expires`` equal to the job's retention left (moto does not enforce expiry: the number is
  asserted), and an expired job's objects are deleted.
- A Redis fleet (``sdworker api`` + ``sdworker worker``, both with the flag): the worker uploads, Redis
  keeps only the object key (no value holds PNG bytes; ``MEMORY USAGE`` of the image key is a few dozen
  bytes), the stream's ``complete`` event still carries the image, and the API node's sweep deletes the
  objects when the job expires. Without the flag the fleet keeps the PNG in Redis, as before.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest import mock
from urllib.parse import parse_qs, urlsplit

import boto3
import httpx
import pytest
import redis

from sdworker.client import Client
from tests.api import helpers
from tests.api.helpers import running_app
from tests.fleet.procs import ApiNode, Worker, wait_until, workers_ready
from tests.integrator.receiver import receiving
from tests.live.server import LiveServer, free_port
from tests.redis_server import RedisServer

pytestmark = pytest.mark.live

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
BUCKET = "sdworker-results"
KEY = "s3-test-key-0123456789"
JOB = {"prompt": "a red cube", "steps": 2, "width": 64, "height": 64, "seed": 5}
TTL = 8.0  # short, so the test sees the objects deleted; long enough to read the job first


@dataclass
class S3:
    client: Any
    endpoint: str

    def keys(self, prefix: str) -> list[str]:
        answer = self.client.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
        return [item["Key"] for item in answer.get("Contents", [])]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with open(log, "wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                   stdout=out, stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    try:
        with mock.patch.dict(os.environ, env):  # the servers started below inherit them, as boto3 here does
            wait_until(lambda: _answers(endpoint), 60, log.read_text)
            client = boto3.client("s3")
            client.create_bucket(Bucket=BUCKET)
            yield S3(client, endpoint)
    finally:
        process.terminate()
        process.wait(20)


def _answers(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
        return True
    except httpx.TransportError:
        return False


def _wait_done(base: str, job_id: str, headers: dict[str, str] | None = None) -> tuple[dict[str, Any], float]:
    """The finished job's view, and when it was asked for (its presigned URLs' lifetime starts then)."""
    found: dict[str, Any] = {}

    def done() -> bool:
        found["asked_at"] = time.time()
        found["job"] = httpx.get(f"{base}/v1/jobs/{job_id}", headers=headers, timeout=5).json()
        return found["job"]["status"] in ("completed", "failed", "cancelled")

    wait_until(done, 120)
    assert found["job"]["status"] == "completed", found
    return found["job"], found["asked_at"]


def _check_presigned(url: str, s3: S3, key: str, expires_at: str, asked_at: float) -> bytes:
    """The URL is the bucket's, for ``key``, lasting the job's retention left; a plain GET fetches it."""
    parts = urlsplit(url)
    assert url.startswith(s3.endpoint) and parts.path == f"/{BUCKET}/{key}", url
    query = parse_qs(parts.query)
    left = datetime.fromisoformat(expires_at.replace("Z", "+00:00")).timestamp() - asked_at
    assert abs(int(query["X-Amz-Expires"][0]) - left) <= 2, (query["X-Amz-Expires"], left)
    assert "X-Amz-Signature" in query
    answer = httpx.get(url, timeout=10)  # no API key: the signature is the credential
    assert answer.status_code == 200, answer.text
    assert answer.content.startswith(PNG_MAGIC)
    return answer.content


def test_serve_keeps_outputs_in_the_bucket(s3: S3, demo_cache_dir: Path, tmp_path: Path) -> None:
    prefix = f"serve-{uuid.uuid4().hex[:8]}"
    port = free_port()
    with receiving() as receiver:
        flags = ("--results-s3", f"s3://{BUCKET}/{prefix}", "--api-key", KEY, "--result-ttl-seconds", str(TTL),
                 "--webhook-allow-private")
        server = LiveServer(demo_cache_dir, port, *flags, log_path=tmp_path / "serve.log")
        try:
            server.wait_ready()
            auth = {"Authorization": f"Bearer {KEY}"}
            answer = httpx.post(f"{server.url}/v1/jobs", json={**JOB, "webhook": {"url": receiver.url}}, headers=auth)
            assert answer.status_code == 202, answer.text
            job_id = answer.json()["job_id"]
            job, asked_at = _wait_done(server.url, job_id, auth)
            key = f"{prefix}/{job_id}/0.png"
            assert s3.keys(prefix) == [key]
            png = _check_presigned(job["images"][0], s3, key, job["expires_at"], asked_at)
            assert job["image_url"] == job["images"][0]  # the first image, presigned the same
            with Client(server.url, api_key=KEY) as client:  # the Python client shows the same URLs
                info = client.get(job_id)
            assert info.image_urls[0].startswith(s3.endpoint) and info.expires_at == job["expires_at"]
            # The API still serves the image (from the bucket), and the outputs folder holds none.
            served = httpx.get(f"{server.url}/v1/jobs/{job_id}/image", headers=auth, timeout=10)
            assert served.content == png
            data_dir = tmp_path / f"data-{port}"
            assert not list(data_dir.rglob("*.png"))
            # The webhook's body carries the presigned URL too.
            [hook] = _wait_hook(receiver)
            hooked = json.loads(hook.body)["data"]
            assert urlsplit(hooked["images"][0]).path == urlsplit(job["images"][0]).path
            assert httpx.get(hooked["images"][0], timeout=10).content == png
            # The OpenAI door's response_format "url": presigned as well.
            openai = httpx.post(f"{server.url}/v1/images/generations", headers=auth, timeout=120,
                                json={"prompt": "a cube", "size": "64x64", "response_format": "url"})
            assert openai.status_code == 200, openai.text
            url = openai.json()["data"][0]["url"]
            assert url.startswith(s3.endpoint) and httpx.get(url, timeout=10).content.startswith(PNG_MAGIC)
            # Retention ends: the job's objects are deleted from the bucket.
            wait_until(lambda: key not in s3.keys(prefix), TTL + 30, server.log)
        finally:
            server.stop()


def _wait_hook(receiver: Any) -> list[Any]:
    deadline = time.monotonic() + 30
    while not (got := receiver.snapshot()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return got


def test_a_fleet_keeps_only_object_keys_in_redis(
    s3: S3, redis_server: RedisServer, demo_cache_dir: Path, tmp_path: Path
) -> None:
    prefix = f"fleet{uuid.uuid4().hex[:8]}"
    flags = ("--results-s3", f"s3://{BUCKET}/{prefix}", "--result-ttl-seconds", str(TTL))
    worker = Worker(redis_server.url, prefix, "s3w", cache_dir=demo_cache_dir, log_path=tmp_path / "worker.log",
                    extra=flags)
    api = ApiNode(redis_server.url, prefix, cache_dir=demo_cache_dir, log_path=tmp_path / "api.log", extra=flags)
    db = redis.Redis.from_url(redis_server.url)
    try:
        api.wait_up()
        wait_until(lambda: workers_ready(api.url, {"s3w"}), 120, worker.log, worker)
        answer = httpx.post(f"{api.url}/v1/jobs", json=JOB, timeout=10)
        assert answer.status_code == 202, answer.text
        job_id = answer.json()["job_id"]
        job, asked_at = _wait_done(api.url, job_id)
        key = f"{prefix}/{job_id}/0.png"
        assert s3.keys(prefix) == [key]
        png = _check_presigned(job["images"][0], s3, key, job["expires_at"], asked_at)

        # Redis holds the object's key where the PNG was, and no value of the job holds PNG bytes.
        image_key = f"{prefix}:job:{job_id}:img:0"
        assert db.get(image_key) == b"ref:" + key.encode()
        assert int(db.memory_usage(image_key) or 0) < 512 < len(png)  # the key's string, not the image
        for name in db.scan_iter(match=f"{prefix}:job:{job_id}*"):
            assert PNG_MAGIC not in _dump(db, name), name
        # The API node fetches it for GET /image and for the stream's complete event.
        assert httpx.get(f"{api.url}/v1/jobs/{job_id}/image", timeout=10).content == png
        stream = httpx.get(f"{api.url}/v1/jobs/{job_id}/stream", timeout=30).text
        assert base64.b64decode(_sse_data(stream, "complete")["image"]) == png

        # Retention ends: Redis forgets the job by TTL, the API node's sweep deletes the object.
        wait_until(lambda: key not in s3.keys(prefix), TTL + 30, api.log)
        wait_until(lambda: db.zcard(f"{prefix}:results:expiry") == 0, 10)
    finally:
        for proc in (worker, api):
            proc.stop() if proc.alive() else proc.kill()
        db.close()


def _sse_data(stream: str, name: str) -> dict[str, Any]:
    for frame in stream.split("\n\n"):
        lines = frame.splitlines()
        if f"event: {name}" in lines:
            return dict(json.loads(next(line[5:] for line in lines if line.startswith("data:"))))
    raise AssertionError(f"no {name} event in {stream[:500]!r}")


def _dump(db: redis.Redis, name: bytes) -> bytes:
    kind = db.type(name)
    if kind == b"string":
        return bytes(db.get(name) or b"")
    if kind == b"hash":
        return b"".join(k + v for k, v in db.hgetall(name).items())
    if kind == b"stream":
        return b"".join(k + v for _, fields in db.xrange(name) for k, v in fields.items())
    return b""


async def test_without_the_flag_a_fleet_keeps_the_png_in_redis(redis_server: RedisServer) -> None:
    helpers.BACKEND.update(name="redis", url=redis_server.url)
    try:
        async with running_app() as app:
            job_id = await app.submit()
            await app.wait_status(job_id, "completed")
            prefix = app.app.state.settings.redis_prefix
            db = redis.Redis.from_url(redis_server.url)
            try:
                assert (db.get(f"{prefix}:job:{job_id}:img:0") or b"").startswith(PNG_MAGIC)
            finally:
                db.close()
    finally:
        helpers.BACKEND.update(name="memory", url=None)

"""Previews through the API (only with watchers; skipped when encoding lags) and graceful drain."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
import time
from typing import Any

from PIL import Image

from sdworker.engine.fake import FakeEngine
from sdworker.imaging.encode import encode_image

from .helpers import SMALL, backend_name, parse_sse, running_app


async def _watched_job(
    app: Any, gate: threading.Event, **body: Any
) -> tuple[str, list[tuple[int, str, dict[str, Any]]]]:
    """Queue a job while the model 'loads', attach a watcher, then let it run."""
    job_id = await app.submit(**body)
    stream = asyncio.create_task(app.client.get(f"/v1/jobs/{job_id}/stream"))

    async def watched() -> bool:
        return bool((await app.status(job_id))["watchers"] == 1)

    await app.wait_for(watched)
    gate.set()
    return job_id, parse_sse((await stream).text)


async def test_previews_are_decoded_only_while_somebody_watches() -> None:
    gate = threading.Event()
    engine = FakeEngine(load_gate=gate, step_seconds=0.03)  # time to encode between previews
    async with running_app(engine, wait_ready=False) as app:
        _, events = await _watched_job(
            app,
            gate,
            steps=6,
            width=128,
            height=96,
            preview={"every": 2, "max_size": 64, "format": "webp", "quality": 50},
        )
        previews = [data for _, name, data in events if name == "preview"]
        # Steps 2 and 4 (never 6, the last); 4 only if step 2's preview was encoded by then.
        assert [p["step"] for p in previews] in ([2, 4], [2])
        assert engine.render_preview_calls == len(previews)
        for preview in previews:
            image = Image.open(io.BytesIO(base64.b64decode(preview["image"])))
            assert image.format == "WEBP" and image.size == (64, 48) == (preview["width"], preview["height"])
            assert preview["method"] == "latent2rgb" and preview["format"] == "webp"
        steps = sorted(d["step"] for _, name, d in events if name in ("progress", "preview"))
        assert steps == [1, 2, 3, 4, 5, 6]

        unwatched = await app.submit(steps=6, preview={"every": 1})
        await app.wait_status(unwatched, "completed")
        assert engine.render_preview_calls == len(previews)  # nobody watched: not one decode
        replay = parse_sse((await app.client.get(f"/v1/jobs/{unwatched}/stream")).text)
        assert "preview" not in [name for _, name, _ in replay] and replay[-2][1] == "complete"


async def test_a_slow_encoder_makes_previews_skip_not_generation_wait() -> None:
    gate = threading.Event()

    def slow_encode(pixels: Any, fmt: str, quality: int) -> bytes:
        time.sleep(0.15)  # the injected encoder lags behind 20 ms steps
        return encode_image(pixels, fmt, quality)

    engine = FakeEngine(load_gate=gate, step_seconds=0.02)
    async with running_app(engine, encode=slow_encode, wait_ready=False) as app:
        _, events = await _watched_job(app, gate, steps=20, preview={"every": 1})
        previews = [d["step"] for _, name, d in events if name == "preview"]
        started = next(d["at"] for _, name, d in events if name == "started")
        seconds = next(d["at"] for _, name, d in events if name == "complete") - started
        # Had the GPU thread waited for the encoder, every preview would be sent and none skipped
        # (asserted below, on the metric; how long the job took belongs in bench/previews.py).
        assert 1 <= len(previews) <= seconds / 0.15 + 1, (previews, seconds)  # one per encode at most
        metrics = (await app.client.get("/metrics")).text
        skipped = next(
            line for line in metrics.splitlines() if line.startswith('sdworker_previews_total{result="skipped_busy"}')
        )
        assert float(skipped.split()[-1]) >= 1
        assert float(skipped.split()[-1]) + len(previews) >= 19  # every step but the last: sent or skipped


async def test_min_interval_limits_previews_per_second() -> None:
    gate = threading.Event()
    engine = FakeEngine(load_gate=gate, step_seconds=0.02)
    async with running_app(engine, wait_ready=False) as app:
        _, events = await _watched_job(app, gate, steps=25, preview={"every": 1, "min_interval_ms": 200})
        previews = [d for _, name, d in events if name == "preview"]
        started = next(d["at"] for _, name, d in events if name == "started")
        seconds = next(d["at"] for _, name, d in events if name == "complete") - started
        assert 1 <= len(previews) <= seconds / 0.2 + 1, (len(previews), seconds)  # at most 1 per 200 ms
        assert len(previews) < 24  # without the interval every step but the last would have one


async def test_drain_ends_queued_and_running_jobs_and_every_stream() -> None:
    """Memory: nobody else could run the jobs, so the queued one and (after the grace) the running one
    end with ``shutting_down``. Redis: the fleet runs them, so the running job is handed back to the
    queue at once (not an attempt) and the queued one stays; the streams end with a ``notice``
    ``stream_closing`` so that watchers reconnect (to another node, or after the restart)."""
    gate = threading.Event()
    engine = FakeEngine(load_gate=gate, step_seconds=0.02)
    async with running_app(engine, wait_ready=False, shutdown_grace_seconds=0.2) as app:
        running = await app.submit(steps=150)
        queued = await app.submit(**SMALL)
        streams = [asyncio.create_task(app.client.get(f"/v1/jobs/{j}/stream")) for j in (running, queued)]
        gate.set()
        await app.wait_status(running, "running")
        node = app.app.state.node
        drain = asyncio.create_task(node.drain())
        await asyncio.sleep(0)
        assert (await app.client.get("/ready")).status_code == 503
        refused = await app.client.post("/v1/jobs", json={"prompt": "x", **SMALL})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "not_ready"
        await asyncio.wait_for(drain, 10)
        texts = [(await s).text for s in streams]
        if backend_name() == "memory":
            for text in texts:
                *_, last, end = parse_sse(text)
                assert last[1] == "error" and last[2]["code"] == "shutting_down", last
                assert end[1:] == ("end", f"[ERROR] {last[2]['message']}")  # a shutdown is no client's cancel
            assert (await app.status(running))["status"] == "cancelled"
            assert (await app.status(queued))["status"] == "cancelled"
        else:
            for text in texts:
                events = parse_sse(text)
                assert all(name not in ("complete", "error", "end") for _, name, _ in events)
                # The job outlives the process: the stream says so last, so the client comes back.
                assert events[-1][:2] == (0, "notice") and events[-1][2]["code"] == "stream_closing", events
            handed_back = await app.status(running)
            assert handed_back["status"] == "queued" and handed_back["attempt"] == 0, handed_back
            assert (await app.status(queued))["status"] == "queued"
        assert node.service.bus.total_watchers() == 0


async def test_drain_lets_a_running_job_finish_within_the_grace_period() -> None:
    engine = FakeEngine(step_seconds=0.05)
    async with running_app(engine, shutdown_grace_seconds=10.0) as app:
        job_id = await app.submit(steps=10)
        stream = asyncio.create_task(app.client.get(f"/v1/jobs/{job_id}/stream"))
        await app.wait_status(job_id, "running")
        await asyncio.wait_for(app.app.state.node.drain(), 10)
        assert (await app.status(job_id))["status"] == "completed"
        assert [e[1] for e in parse_sse((await stream).text)][-2:] == ["complete", "end"]
        assert not engine.closed
    assert engine.closed  # the lifespan's end frees the engine (on its own thread)

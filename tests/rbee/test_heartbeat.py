"""Heartbeats to rbee's queen: the body, prompt beats on every change in order, the interval, one
``stopping``; a queen that is down, refuses or hangs costs a rate-limited warning and nothing else."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import httpx
import pytest
from api.helpers import running_app
from live.server import free_port

from sdworker.engine.fake import FakeEngine
from sdworker.jobs.heartbeat import QueenHeartbeat, WorkerCard

CARD = WorkerCard(id="w1", model_id="demo", device="cpu", port=9001, version="0.1.0")


class Queen:
    """An httpx transport that records beats (or fails, or hangs)."""

    def __init__(self, mode: str = "ok") -> None:
        self.mode = mode
        self.beats: list[dict[str, Any]] = []
        self.requests = 0
        self.arrived = asyncio.Event()

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests += 1
        if self.mode == "down":
            raise httpx.ConnectError("connection refused", request=request)
        if self.mode == "hang":
            await asyncio.Event().wait()
        assert request.method == "POST" and request.url.path == "/v1/worker-heartbeat"
        self.beats.append(httpx.Response(200, content=request.content).json())
        self.arrived.set()
        return httpx.Response(500 if self.mode == "error" else 200)

    def statuses(self) -> list[str]:
        return [beat["worker"]["status"] for beat in self.beats]

    async def wait_for(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self.beats) < count:
                self.arrived.clear()
                await self.arrived.wait()


def heartbeat(queen: Queen, state: list[str], **kwargs: Any) -> QueenHeartbeat:
    return QueenHeartbeat(
        "http://queen:7833/", CARD, lambda: state[0], transport=httpx.MockTransport(queen.handle), **kwargs
    )


async def test_beats_in_order_on_every_change_then_one_stopping() -> None:
    queen, state = Queen(), ["starting"]
    beats = heartbeat(queen, state, interval_seconds=600)
    beats.start()
    await queen.wait_for(1)
    for status in ("ready", "busy", "ready"):  # faster than one request: each is still sent, in order
        state[0] = status
        beats.changed()
    beats.changed()  # no change: no beat
    await queen.wait_for(4)
    await beats.stop()
    await beats.stop()  # idempotent: one stopping
    assert queen.statuses() == ["starting", "ready", "busy", "ready", "stopping"]
    first = queen.beats[0]
    assert first["worker"] == {
        "id": "w1", "model_id": "demo", "device": "cpu", "port": 9001, "status": "starting",
        "implementation": "sdworker", "version": "0.1.0",
    }
    assert first["timestamp"].endswith("Z") and datetime.fromisoformat(first["timestamp"]).tzinfo is not None
    assert beats.url == "http://queen:7833/v1/worker-heartbeat"


async def test_the_interval_repeats_the_current_status() -> None:
    queen, state = Queen(), ["ready"]
    beats = heartbeat(queen, state, interval_seconds=0.05)
    beats.start()
    await queen.wait_for(3)
    await beats.stop()
    assert set(queen.statuses()[:3]) == {"ready"} and queen.statuses()[-1] == "stopping"


@pytest.mark.parametrize("mode", ["down", "error", "hang"])
async def test_a_queen_that_is_down_refuses_or_hangs_costs_one_warning(
    mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    queen, state = Queen(mode), ["starting"]
    beats = heartbeat(queen, state, interval_seconds=0.02, timeout_seconds=0.05)
    with caplog.at_level(logging.WARNING, logger="sdworker.jobs.heartbeat"):
        beats.start()
        async with asyncio.timeout(10):
            while beats.failed < 3:
                state[0] = "busy" if state[0] != "busy" else "ready"
                beats.changed()
                await asyncio.sleep(0.01)
        await asyncio.wait_for(beats.stop(), 10)  # bounded by the timeout even when the queen hangs
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "queen" in warnings[0].getMessage()
    assert beats.sent == 0 and len(beats._noted) == 0  # nothing stale waits for the queen's return


async def test_the_app_serves_with_its_queen_down() -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with running_app(FakeEngine(), queen_url=down, worker_id="w1", heartbeat_seconds=0.05) as app:
        heartbeat = app.app.state.node.heartbeat
        assert heartbeat is not None and heartbeat.card.id == "w1"
        job_id = await app.submit()
        assert (await app.wait_status(job_id, "completed"))["status"] == "completed"
        await app.wait_for(lambda: _failed_at_least(heartbeat, 2))
        assert (await app.client.get("/ready")).status_code == 200


async def _failed_at_least(heartbeat: QueenHeartbeat, count: int) -> bool:
    return heartbeat.failed >= count


async def test_no_queen_url_no_heartbeat() -> None:
    async with running_app() as app:
        assert app.app.state.node.heartbeat is None


async def test_stopping_is_sent_once_by_stop_even_if_the_drain_is_noticed_first() -> None:
    queen, state = Queen(), ["ready"]
    beats = heartbeat(queen, state, interval_seconds=0.02)
    beats.start()
    await queen.wait_for(1)
    state[0] = "stopping"  # the node began draining; the runner says so before stop() runs
    beats.changed()
    await asyncio.sleep(0.1)  # several intervals
    await beats.stop()
    assert queen.statuses().count("stopping") == 1 and queen.statuses()[-1] == "stopping"

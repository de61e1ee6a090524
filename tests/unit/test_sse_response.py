"""The SSE response: keep-alive comments, a bounded send for a watcher that stops reading, and the
subscription released however the stream ends."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from sdworker.api.sse import KEEPALIVE, EventStreamResponse, event_frames
from sdworker.events.bus import EventBus
from sdworker.events.types import JobCompleted, StepProgressed, end_marker


def make_bus() -> EventBus:
    bus = EventBus()
    bus.open("j")
    return bus


async def test_keepalive_comment_when_nothing_happens_then_frames_then_end() -> None:
    bus = make_bus()
    frames = event_frames(bus.subscribe("j"), keepalive_seconds=0.02)
    assert (await anext(frames)).startswith(b"retry: ")
    assert await anext(frames) == KEEPALIVE
    bus.publish(StepProgressed(job_id="j", step=1, total=2))
    assert (await anext(frames)).startswith(b"id: 1\nevent: progress\n")
    completed = JobCompleted(job_id="j", images=(b"p",), seed=1, seeds=(1,), width=8, height=8)
    bus.publish(completed)
    assert b"event: complete" in await anext(frames)
    bus.publish(end_marker(completed))
    assert await anext(frames) == b"id: 3\nevent: end\ndata: [DONE]\n\n"
    assert [chunk async for chunk in frames] == []
    assert bus.watcher_count("j") == 0


async def test_a_watcher_that_stops_reading_is_disconnected_after_the_send_timeout() -> None:
    bus = make_bus()
    sent: list[dict[str, Any]] = []
    stuck = asyncio.Event()
    closed = []

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.body" and len(sent) >= 2:
            stuck.set()
            await asyncio.Event().wait()  # the client's socket buffer is full: this write never completes
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client never hangs up
        return {}

    response = EventStreamResponse(
        event_frames(bus.subscribe("j"), keepalive_seconds=10),
        send_timeout_seconds=0.2,
        on_close=lambda: closed.append(True),
    )
    task = asyncio.create_task(response({"type": "http"}, receive, send))  # type: ignore[arg-type]
    for step in range(1, 4):
        bus.publish(StepProgressed(job_id="j", step=step, total=9))
    await asyncio.wait_for(stuck.wait(), 2)
    await asyncio.wait_for(task, 2)  # returned after the 0.2 s send timeout
    assert closed == [True]
    assert bus.watcher_count("j") == 0  # its subscription is gone with it


async def test_client_disconnect_ends_the_response_and_releases_the_subscription() -> None:
    bus = make_bus()
    hang_up = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        pass

    async def receive() -> dict[str, Any]:
        await hang_up.wait()
        return {"type": "http.disconnect"}

    response = EventStreamResponse(event_frames(bus.subscribe("j"), keepalive_seconds=10), send_timeout_seconds=5)
    task = asyncio.create_task(response({"type": "http"}, receive, send))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    assert bus.watcher_count("j") == 1
    hang_up.set()
    await asyncio.wait_for(task, 2)
    assert bus.watcher_count("j") == 0


async def test_a_response_that_never_starts_still_releases_the_subscription() -> None:
    """The client left before the headers went out: the frame generator never ran, so only the
    response's ``on_close`` (which the stream route wires to ``subscription.close``) can release it."""
    bus = make_bus()
    sub = bus.subscribe("j")
    assert bus.watcher_count("j") == 1

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        raise OSError("the client is gone")

    response = EventStreamResponse(event_frames(sub, 15.0), send_timeout_seconds=1.0, on_close=sub.close)
    with contextlib.suppress(OSError):
        await response({"type": "http"}, receive, send)  # type: ignore[arg-type]
    assert bus.watcher_count("j") == 0


async def test_the_end_frame_is_the_body_s_last_send_and_the_subscription_is_released() -> None:
    """At a job's end, ``complete`` and ``end`` go out as the body's end in one send: a thousand
    watchers each write once, not once more for an empty last chunk."""
    bus = make_bus()
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()  # the client stays
        return {}

    response = EventStreamResponse(event_frames(bus.subscribe("j"), keepalive_seconds=10), send_timeout_seconds=5)
    task = asyncio.create_task(response({"type": "http"}, receive, send))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    bus.publish(StepProgressed(job_id="j", step=1, total=2))
    await asyncio.sleep(0.05)
    done = bus.publish(JobCompleted(job_id="j", images=(b"p",), seed=1, seeds=(1,), width=8, height=8))
    assert done is not None
    bus.publish(end_marker(done))
    await asyncio.wait_for(task, 2)
    bodies = [(m["body"], m["more_body"]) for m in sent if m["type"] == "http.response.body"]
    assert [more for _, more in bodies] == [True, True, False]  # retry, progress, then complete + end
    assert b"event: complete" in bodies[-1][0] and bodies[-1][0].endswith(b"event: end\ndata: [DONE]\n\n")
    assert bus.watcher_count("j") == 0


async def test_an_end_that_comes_alone_also_ends_the_body() -> None:
    # A watcher that had taken ``complete`` before ``end`` was published gets ``end`` as its last send.
    bus = make_bus()
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        await asyncio.Event().wait()
        return {}

    response = EventStreamResponse(event_frames(bus.subscribe("j"), keepalive_seconds=10), send_timeout_seconds=5)
    task = asyncio.create_task(response({"type": "http"}, receive, send))  # type: ignore[arg-type]
    await asyncio.sleep(0.05)
    done = bus.publish(JobCompleted(job_id="j", images=(b"p",), seed=1, seeds=(1,), width=8, height=8))
    assert done is not None
    await asyncio.sleep(0.05)
    bus.publish(end_marker(done))
    await asyncio.wait_for(task, 2)
    bodies = [(m["body"], m["more_body"]) for m in sent if m["type"] == "http.response.body"]
    assert [more for _, more in bodies] == [True, True, False]  # retry, complete, end
    assert bodies[-1][0] == b"id: 2\nevent: end\ndata: [DONE]\n\n"

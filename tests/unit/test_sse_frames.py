"""Wire frames: the reference design's event names and fields, plus ids and our additions, and the
closing `end` event with rbee's completion marker as its plain (non-JSON) data."""

from __future__ import annotations

import base64
import json

from sdworker.api.sse import event_payload, frame
from sdworker.events.types import (
    JobCompleted,
    JobEnded,
    JobEvent,
    JobFailed,
    JobQueued,
    JobStarted,
    PreviewReady,
    StepProgressed,
    end_marker,
)


def parse(data: bytes) -> tuple[int, str, dict[str, object]]:
    lines = data.decode().strip().split("\n")
    assert data.endswith(b"\n\n")
    assert lines[0].startswith("id: ") and lines[1].startswith("event: ") and lines[2].startswith("data: ")
    return int(lines[0][4:]), lines[1][7:], json.loads(lines[2][6:])


def test_progress_and_preview_keep_reference_fields() -> None:
    seq, name, data = parse(frame(StepProgressed(job_id="j", seq=7, at=1.5, step=5, total=20)))
    assert (seq, name) == (7, "progress")
    assert data == {"type": "progress", "step": 5, "total": 20, "percent": 25.0, "at": 1.5, "pass": 1}
    _, _, data = parse(frame(StepProgressed(job_id="j", seq=9, at=1.5, step=15, total=20, pass_number=2)))
    assert (data["step"], data["total"], data["pass"]) == (15, 20, 2)  # a hires fix's second pass
    event = PreviewReady(
        job_id="j",
        seq=8,
        step=10,
        total=20,
        image=b"\xff\xd8jpeg",
        format="jpeg",
        width=256,
        height=192,
        method="latent2rgb",
        pass_number=2,
    )
    _, name, data = parse(frame(event))
    assert name == "preview" and data["type"] == "preview" and data["percent"] == 50.0 and data["pass"] == 2
    assert base64.b64decode(str(data["image"])) == b"\xff\xd8jpeg"
    assert (data["format"], data["width"], data["height"], data["method"]) == ("jpeg", 256, 192, "latent2rgb")


def test_complete_error_queued_started() -> None:
    one = JobCompleted(job_id="j", seq=3, images=(b"PNG1",), seed=42, seeds=(42,), width=64, height=32)
    _, name, data = parse(frame(one))
    assert name == "complete" and data["format"] == "png" and data["seed"] == 42
    assert base64.b64decode(str(data["image"])) == b"PNG1" and "images" not in data
    two = JobCompleted(job_id="j", seq=3, images=(b"A", b"B"), seed=1, seeds=(1, 2), width=8, height=8)
    _, _, data = parse(frame(two))
    assert [base64.b64decode(i) for i in data["images"]] == [b"A", b"B"]  # type: ignore[attr-defined]
    events: list[tuple[JobEvent, str, dict[str, object]]] = [
        (JobFailed(job_id="j", seq=1, code="cancelled", message="m"), "error", {"code": "cancelled", "message": "m"}),
        (JobQueued(job_id="j", seq=1, position=3), "queued", {"position": 3}),
        (JobStarted(job_id="j", seq=1), "started", {}),
    ]
    for event, expected_name, fields in events:
        _, name, data = parse(frame(event))
        assert name == expected_name and data["type"] == expected_name
        assert {k: data[k] for k in fields} == fields


def test_end_event_carries_the_marker_on_one_data_line_with_an_id() -> None:
    done = end_marker(JobCompleted(job_id="j", images=(b"P",), seed=1, seeds=(1,), width=8, height=8))
    assert frame(JobEnded(job_id="j", seq=9, marker=done.marker)) == b"id: 9\nevent: end\ndata: [DONE]\n\n"
    failed = end_marker(JobFailed(job_id="j", code="generation_failed", message="CUDA out of memory\ntry smaller"))
    assert frame(JobEnded(job_id="j", seq=4, marker=failed.marker)) == (
        b"id: 4\nevent: end\ndata: [ERROR] CUDA out of memory try smaller\n\n"
    )
    # Its JSON view, for code that shows events as JSON (not what goes on the wire).
    assert event_payload(done) == ("end", {"type": "end", "marker": "[DONE]", "at": 0.0})
    # A marker written by another backend with a line break still makes one data line.
    assert frame(JobEnded(job_id="j", seq=5, marker="[ERROR] a\nb")).count(b"data:") == 1


async def test_frames_already_waiting_go_out_in_one_chunk_and_the_stream_ends_there() -> None:
    # At a job's end ``complete`` and ``end`` are published in one loop turn: each watcher of a
    # thousand wakes once and writes once for both.
    from sdworker.api.sse import event_frames
    from sdworker.events.bus import EventBus

    bus = EventBus()
    bus.open("j")
    sub = bus.subscribe("j")
    frames = event_frames(sub, keepalive_seconds=5)
    assert (await anext(frames)).startswith(b"retry: ")
    done = bus.publish(JobCompleted(job_id="j", images=(b"png",), seed=1, seeds=(1,), width=8, height=8))
    assert done is not None
    bus.publish(end_marker(done))
    chunk = await anext(frames)
    assert chunk.startswith(frame(done)) and chunk.endswith(b"event: end\ndata: [DONE]\n\n")
    assert [line for line in chunk.decode().splitlines() if line.startswith("event: ")] == [
        "event: complete",
        "event: end",
    ]
    assert [f async for f in frames] == []


async def test_a_thousand_watchers_share_one_encoding_of_the_final_frames(monkeypatch: object) -> None:
    # The fan-out's cost at a job's end: every watcher must get the very same bytes (one base64 of
    # the image, one JSON dump, one join of ``complete`` + ``end``), not its own copy.
    import sdworker.api.sse as sse
    from sdworker.events.bus import EventBus

    encoded: list[str] = []
    payload = sse.event_payload

    def counting(event: JobEvent) -> tuple[str, dict[str, object]]:
        encoded.append(type(event).__name__)
        return payload(event)

    monkeypatch.setattr(sse, "event_payload", counting)  # type: ignore[attr-defined]
    bus = EventBus()
    bus.open("many")
    streams = [sse.event_frames(bus.subscribe("many"), keepalive_seconds=5) for _ in range(1000)]
    for stream in streams:
        assert (await anext(stream)).startswith(b"retry: ")
    done = bus.publish(JobCompleted(job_id="many", images=(b"\x89PNG" * 5000,), seed=1, seeds=(1,), width=8, height=8))
    assert done is not None
    bus.publish(end_marker(done))
    chunks = [await anext(stream) for stream in streams]
    assert encoded == ["JobCompleted"]  # JobEnded's frame is its bare marker, no JSON
    assert all(chunk is chunks[0] for chunk in chunks)
    assert chunks[0] == frame(done) + b"id: 2\nevent: end\ndata: [DONE]\n\n"
    for stream in streams:
        assert [f async for f in stream] == []

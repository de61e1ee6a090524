"""EventBus: sequence numbers, fan-out, replay history, coalescing for laggards, stall disconnects, and
the two-step end of a job (terminal event, then the end marker)."""

from __future__ import annotations

import asyncio

import pytest

from sdworker.events.bus import EventBus, Subscription
from sdworker.events.types import (
    JobCompleted,
    JobEnded,
    JobEvent,
    JobFailed,
    JobQueued,
    JobStarted,
    PreviewReady,
    StepProgressed,
    StreamNotice,
    end_marker,
    stream_closing,
)

JOB = "job1"


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def progress(step: int, total: int = 10) -> StepProgressed:
    return StepProgressed(job_id=JOB, step=step, total=total)


def preview(step: int, total: int = 10) -> PreviewReady:
    return PreviewReady(
        job_id=JOB, step=step, total=total, image=b"img%d" % step, format="jpeg", width=8, height=8, method="latent2rgb"
    )


def completed() -> JobCompleted:
    return JobCompleted(job_id=JOB, images=(b"png",), seed=1, seeds=(1,), width=64, height=64)


def finish(bus: EventBus, terminal: JobCompleted | JobFailed) -> None:
    """What a job backend does at the end: the terminal event, then its end marker."""
    bus.publish(terminal)
    bus.publish(end_marker(terminal))


async def drain(sub: Subscription) -> list[JobEvent]:
    events = []
    while (event := await sub.next(timeout=1.0)) is not None:
        events.append(event)
    return events


def make_bus(**kwargs: object) -> EventBus:
    bus = EventBus(**kwargs)  # type: ignore[arg-type]
    bus.open(JOB)
    return bus


async def test_publish_assigns_increasing_seq_and_time() -> None:
    bus = make_bus()
    stamped = [bus.publish(e) for e in (JobQueued(job_id=JOB, position=1), JobStarted(job_id=JOB), progress(1))]
    assert [e.seq for e in stamped if e] == [1, 2, 3]
    assert all(e is not None and e.at > 0 for e in stamped)
    assert bus.last_seq(JOB) == 3


async def test_fan_out_to_every_subscriber_and_end_after_terminal() -> None:
    bus = make_bus()
    subs = [bus.subscribe(JOB) for _ in range(5)]
    assert bus.watcher_count(JOB) == 5
    for step in (1, 2):
        bus.publish(progress(step))
    finish(bus, completed())
    for sub in subs:
        events = await drain(sub)
        assert [type(e) for e in events] == [StepProgressed, StepProgressed, JobCompleted, JobEnded]
        assert [e.seq for e in events] == [1, 2, 3, 4]


async def test_after_terminal_only_the_end_marker_is_taken_then_nothing() -> None:
    bus = make_bus()
    bus.publish(completed())
    assert not bus.is_finished(JOB)  # the end marker is still to come
    assert bus.publish(progress(3)) is None
    assert bus.publish(JobFailed(job_id=JOB, code="x", message="late")) is None
    end = bus.publish(end_marker(completed()))
    assert isinstance(end, JobEnded) and end.seq == 2 and end.marker == "[DONE]"
    assert bus.is_finished(JOB)
    assert bus.publish(end_marker(completed())) is None


async def test_a_stream_ends_after_the_end_marker_not_after_the_terminal_event() -> None:
    bus = make_bus()
    sub = bus.subscribe(JOB)
    bus.publish(completed())
    assert isinstance(await sub.next(timeout=1.0), JobCompleted)
    with pytest.raises(TimeoutError):  # still open: the marker has not been published
        await sub.next(timeout=0.01)
    bus.publish(end_marker(completed()))
    assert isinstance(await sub.next(timeout=1.0), JobEnded)
    assert await sub.next(timeout=1.0) is None


def test_end_markers_are_rbees() -> None:
    assert end_marker(completed()).marker == "[DONE]"
    assert end_marker(JobFailed(job_id=JOB, code="cancelled", message="the job was cancelled")).marker == "[CANCELLED]"
    failed = end_marker(JobFailed(job_id=JOB, code="generation_failed", message="boom\non line two\r\nand three"))
    assert failed.marker == "[ERROR] boom on line two and three" and failed.job_id == JOB
    shutdown = JobFailed(job_id=JOB, code="shutting_down", message="the server is shutting down")
    assert end_marker(shutdown).marker == "[ERROR] the server is shutting down"  # not the client's cancel
    assert end_marker(JobFailed(job_id=JOB, code="worker_failed", message="")).marker == "[ERROR] worker_failed"


async def test_history_keeps_only_the_latest_preview_image_but_every_id() -> None:
    bus = make_bus()
    bus.publish(JobStarted(job_id=JOB))
    bus.publish(preview(1))
    bus.publish(progress(2))
    bus.publish(preview(3))
    finish(bus, completed())
    replay = await drain(bus.subscribe(JOB))
    assert [e.seq for e in replay] == [1, 2, 3, 4, 5, 6]
    assert [type(e) for e in replay] == [
        JobStarted, StepProgressed, StepProgressed, PreviewReady, JobCompleted, JobEnded
    ]
    assert replay[1].step == 1  # type: ignore[attr-defined]  # the old preview became its step's progress
    assert isinstance(replay[3], PreviewReady) and replay[3].image == b"img3"


async def test_replay_after_id_gives_exactly_the_later_events_then_live_ones() -> None:
    bus = make_bus()
    for step in range(1, 6):
        bus.publish(progress(step))
    sub = bus.subscribe(JOB, after_seq=3)
    bus.publish(progress(6))
    finish(bus, completed())
    assert [e.seq for e in await drain(sub)] == [4, 5, 6, 7, 8]
    assert [e.seq for e in await drain(bus.subscribe(JOB, after_seq=7))] == [8]  # after complete: the end


async def test_subscribing_to_a_finished_job_replays_and_ends() -> None:
    bus = make_bus()
    bus.publish(progress(1))
    finish(bus, JobFailed(job_id=JOB, code="cancelled", message="gone"))
    sub = bus.subscribe(JOB, after_seq=1)
    assert bus.watcher_count(JOB) == 0
    events = await drain(sub)
    assert len(events) == 2 and isinstance(events[0], JobFailed) and events[0].code == "cancelled"
    assert isinstance(events[1], JobEnded) and events[1].marker == "[CANCELLED]"


async def test_lagging_subscriber_coalesces_progress_but_never_drops_terminal() -> None:
    bus = make_bus(max_buffer=4)
    slow = bus.subscribe(JOB)
    fast = bus.subscribe(JOB)
    fast_seen: list[JobEvent] = []
    bus.publish(JobStarted(job_id=JOB))
    for step in range(1, 51):
        bus.publish(preview(step) if step % 5 == 0 else progress(step, 50))
        fast_seen.append(await fast.next(timeout=1.0))  # type: ignore[arg-type]
    finish(bus, completed())
    events = await drain(slow)
    assert slow.pending == 0
    assert len(events) <= 4 + 2
    assert isinstance(events[0], JobStarted)  # never dropped
    assert isinstance(events[-2], JobCompleted) and isinstance(events[-1], JobEnded)  # never dropped
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs)
    # at most one image was held for the slow watcher, and it is the newest preview
    previews = [e for e in events if isinstance(e, PreviewReady)]
    assert len(previews) <= 1 and previews[0].step == 50
    assert len(fast_seen) == 50  # the fast watcher lost nothing


async def test_stalled_subscriber_is_disconnected_on_publish_and_on_sweep() -> None:
    clock = FakeClock()
    bus = make_bus(stall_seconds=10.0, clock=clock)
    stalled = bus.subscribe(JOB)
    reader = bus.subscribe(JOB)
    bus.publish(progress(1))
    await reader.next(timeout=1.0)
    clock.now += 11
    bus.publish(progress(2))  # noticed here: stalled had an event waiting for 11 s
    assert stalled.stalled and bus.watcher_count(JOB) == 1
    assert await stalled.next(timeout=1.0) is None
    await reader.next(timeout=1.0)

    idle = bus.subscribe(
        JOB, after_seq=bus.last_seq(JOB)
    )  # nothing pending: an idle watcher of a quiet job is never stalled
    clock.now += 100
    assert bus.sweep() == 0
    bus.publish(progress(3))
    clock.now += 11
    assert bus.sweep() == 2  # both have had progress 3 waiting for 11 s
    assert idle.stalled and reader.stalled


async def test_next_times_out_for_keepalive_and_close_leaves_the_channel() -> None:
    bus = make_bus()
    sub = bus.subscribe(JOB)
    with pytest.raises(TimeoutError):
        await sub.next(timeout=0.01)
    sub.close()
    assert bus.watcher_count(JOB) == 0 and bus.total_watchers() == 0


async def test_close_all_ends_streams_after_buffered_events() -> None:
    bus = make_bus()
    sub = bus.subscribe(JOB)
    bus.publish(progress(1))
    bus.close_all()
    assert [e.seq for e in await drain(sub)] == [1]


async def test_forget_ends_watchers_and_unknown_job_raises() -> None:
    bus = make_bus()
    sub = bus.subscribe(JOB)
    bus.forget(JOB)
    assert await asyncio.wait_for(sub.next(timeout=1.0), 1.0) is None
    with pytest.raises(KeyError):
        bus.subscribe(JOB)


async def test_watcher_count_follows_counted_subscribers_through_a_crowd() -> None:
    bus = EventBus()
    bus.open(JOB)
    crowd = [bus.subscribe(JOB) for _ in range(300)]
    waiting = bus.subscribe(JOB, counted=False)  # an OpenAI/A1111 call waiting for the outcome
    assert bus.watcher_count(JOB) == bus.subscriber_count(JOB) == 300
    for sub in crowd[:100]:
        sub.close()
        sub.close()  # idempotent: counted once
    waiting.close()
    assert bus.watcher_count(JOB) == 200
    bus.close_all()
    assert bus.watcher_count(JOB) == 0 and bus.subscriber_count(JOB) == 0


async def test_ready_takes_what_waits_without_waiting_and_stops_at_the_end() -> None:
    bus = EventBus()
    bus.open(JOB)
    sub = bus.subscribe(JOB)
    assert sub.ready(10) == []
    bus.publish(progress(1))
    bus.publish(progress(2))
    assert [e.seq for e in sub.ready(1)] == [1]
    done = bus.publish(JobCompleted(job_id=JOB, images=(b"png",), seed=1, seeds=(1,), width=8, height=8))
    assert done is not None
    bus.publish(end_marker(done))
    taken = sub.ready(10)
    assert [type(e) for e in taken] == [StepProgressed, JobCompleted, JobEnded]
    assert await sub.next(timeout=1) is None  # the end was taken: the stream is over


async def test_close_all_tells_streams_of_unfinished_jobs_to_reconnect() -> None:
    bus = EventBus()
    for job in ("open", "done"):
        bus.open(job)
    open_sub, done_sub = bus.subscribe("open"), bus.subscribe("done")
    bus.publish(JobFailed(job_id="done", code="cancelled", message="x"))
    bus.close_all(stream_closing("stopping; reconnect with Last-Event-ID"))
    notices = await drain(open_sub)
    assert [type(e) for e in notices] == [StreamNotice] and notices[0].job_id == "open"
    assert isinstance(notices[0], StreamNotice) and notices[0].code == "stream_closing" and notices[0].seq == 0
    assert [type(e) for e in await drain(done_sub)] == [JobFailed]  # its outcome is known: no notice


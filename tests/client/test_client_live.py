"""``sdworker.client.Client`` against a real server: typed events in order, a cut stream resumed
exactly, idempotent submits, cancel, 429 with and without waiting, errors with the server's code."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest
from PIL import Image

from sdworker.client import (
    BadRequest,
    Client,
    JobCancelled,
    JobCompleted,
    JobQueued,
    JobStarted,
    PreviewOptions,
    PreviewReady,
    QueueFull,
    Reconnect,
    ReconnectNotice,
    StepProgressed,
)

from .conftest import JOB, LONG, job_status, wait_for
from .proxy import TcpProxy

pytestmark = [pytest.mark.live, pytest.mark.slow]


def test_events_arrive_in_order_with_their_types_and_images(url: str) -> None:
    with Client(url) as client:
        job = client.submit(**{**JOB, "steps": 4}, preview=PreviewOptions(every=1, format="png"))
        events = list(job.events())
        assert isinstance(events[0], JobQueued) and isinstance(events[1], JobStarted)
        steps = events[2:-1]
        assert all(isinstance(e, StepProgressed) for e in steps)
        assert [e.step for e in steps] == [1, 2, 3, 4]  # type: ignore[attr-defined]
        previews = [e for e in steps if isinstance(e, PreviewReady)]
        assert previews and previews[-1].image().size == (64, 64) and previews[-1].format == "png"
        done = events[-1]
        assert isinstance(done, JobCompleted) and done.seed == 7 and done.seeds == (7,)
        assert done.images()[0].size == (64, 64)
        assert all(isinstance(e.id, str) for e in events) and len({e.id for e in events}) == len(events)
        # The same stream read again (a late watcher) has the same ids; generate() gives the same pixels.
        assert [e.id for e in client.events(job.job_id)] == [e.id for e in events]
        result = client.generate(**{**JOB, "steps": 4})
        assert result.seed == 7 and result.pngs[0].startswith(b"\x89PNG")
        assert result.images[0].tobytes() == done.images()[0].tobytes()
        assert client.get(job.job_id).status == "completed"
        assert job.job_id in [j.job_id for j in client.list()]
        assert client.health().healthy and client.info().ready


def test_a_cut_stream_resumes_with_last_event_id_and_loses_nothing(url: str, proxy: TcpProxy) -> None:
    notices: list[ReconnectNotice] = []
    with Client(proxy.url, reconnect=Reconnect(initial_delay_seconds=0.05)) as client:
        job = client.submit(**{**JOB, "steps": 40, "width": 128, "height": 128}, preview=PreviewOptions(every=5))
        received = []
        for event in job.events(on_reconnect=notices.append):
            received.append(event)
            if len(received) == 4:
                proxy.cut()  # mid-job: the server side of the client's socket goes away
        assert isinstance(received[-1], JobCompleted)
    assert len(notices) >= 1 and notices[0].last_event_id is not None
    sent = [r for r in proxy.requests() if r.startswith("get ") and "/stream" in r]
    assert any(f"last-event-id: {notices[0].last_event_id}\r\n" in r for r in sent[1:])
    with Client(url) as direct:
        replay = [e.id for e in direct.events(job.job_id)]
    assert [e.id for e in received] == replay  # nothing missing, nothing twice, in order


def test_the_same_idempotency_key_twice_gives_one_job(url: str) -> None:
    with Client(url) as client:
        before = len(client.list())
        first = client.submit(**JOB, idempotency_key="client-test-key-1")
        second = client.submit(**JOB, idempotency_key="client-test-key-1")
        assert second.job_id == first.job_id
        assert len(client.list()) == before + 1


def test_cancel_ends_the_stream_with_the_cancelled_code(url: str) -> None:
    with Client(url) as client:
        job = client.submit(**LONG)
        events = job.events()
        for event in events:
            if isinstance(event, JobStarted):
                break
        assert job.cancel().status in ("cancelling", "cancelled")  # stopping within a step, or stopped
        with pytest.raises(JobCancelled) as raised:
            for _ in events:
                pass
        assert raised.value.code == "cancelled" and raised.value.job_id == job.job_id
        assert job.get().status == "cancelled"


def test_errors_carry_the_servers_code_message_and_field(url: str) -> None:
    with Client(url) as client:
        with pytest.raises(BadRequest) as raised:
            client.submit(**{**JOB, "steps": 0})
        assert (raised.value.status_code, raised.value.code, raised.value.field) == (422, "invalid_request", "steps")
        with pytest.raises(BadRequest) as raised:
            client.submit(**{**JOB, "scheduler": "no-such-sampler"})
        assert raised.value.code == "unknown_scheduler" and "no-such-sampler" in raised.value.message
        with pytest.raises(BadRequest) as raised:
            client.submit(**JOB, init_image=b"not an image")
        assert raised.value.code == "invalid_image"


def fill_queue(client: Client) -> str:
    """A running job that would take long, and a full queue (``--max-queue 2``) behind it."""
    blocker = client.submit(**LONG)
    wait_for(lambda: job_status(client.base_url, blocker.job_id) == "running")
    for _ in range(2):
        client.submit(**JOB)
    return blocker.job_id


def test_a_full_queue_raises_or_waits_for_retry_after(url: str) -> None:
    with Client(url) as client:
        blocker = fill_queue(client)
        with pytest.raises(QueueFull) as raised:
            client.submit(**JOB)
        assert raised.value.code == "queue_full" and raised.value.retry_after_seconds >= 1

        told: list[QueueFull] = []

        def on_queue_full(error: QueueFull) -> None:
            told.append(error)
            if len(told) == 1:  # make room: the queued jobs run once the blocker is gone
                threading.Thread(target=httpx.delete, args=(f"{url}/v1/jobs/{blocker}",)).start()

        job = client.submit(**JOB, wait_for_queue=True, on_queue_full=on_queue_full)
        assert told and told[0].retry_after_seconds >= 1
        assert job.wait().seed == 7


def test_images_can_be_sent_as_paths_bytes_or_pillow(url: str, tmp_path: Any) -> None:
    init = Image.new("RGB", (64, 64), (200, 30, 30))
    init.save(tmp_path / "init.png")
    mask = Image.new("L", (64, 64), 255)
    with Client(url) as client:
        a = client.generate("a cat", init_image=tmp_path / "init.png", strength=0.5, steps=2, seed=3)
        b = client.generate("a cat", init_image=init, strength=0.5, steps=2, seed=3)
        c = client.generate("a cat", init_image=(tmp_path / "init.png").read_bytes(), mask_image=mask, steps=2, seed=3)
        assert client.get(c.job_id).parameters["operation"] == "image_inpaint"
    assert a.images[0].tobytes() == b.images[0].tobytes() and (a.width, a.height) == (64, 64)

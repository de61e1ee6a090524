"""The client's protocol handling without a server (httpx ``MockTransport``): SSE framing, events it
does not know, error events and bodies, reconnect bounds, headers."""

from __future__ import annotations

import base64
import io
import json
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from PIL import Image

from sdworker.client import (
    BadRequest,
    Client,
    ConnectionLost,
    JobCompleted,
    JobFailed,
    NotFound,
    OtherEvent,
    Reconnect,
    StepProgressed,
    Unauthorized,
)
from sdworker.client.events import SSEDecoder
from sdworker.client.wire import retry_after_seconds

FAST = Reconnect(attempts=2, initial_delay_seconds=0.001, max_delay_seconds=0.001)


def frame(event_id: str, name: str, **data: object) -> str:
    return f"id: {event_id}\nevent: {name}\ndata: {json.dumps({'type': name, **data})}\n\n"


def png() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


COMPLETE = frame("1764550000003-0", "complete", image=png(), format="png", seed=9, seeds=[9], width=8, height=8)


def test_sse_decoder_follows_the_event_stream_format() -> None:
    decoder = SSEDecoder()
    lines = [": keep-alive", "", "retry: 2000", "id: 1764550000000-0", "event: custom", "data: a", "data:b", "",
             "data: no event name\r", "", "event: empty-is-skipped", ""]
    events = [e for line in lines if (e := decoder.feed(line)) is not None]
    assert [(e.event, e.data, e.id, e.retry_ms) for e in events] == [
        ("custom", "a\nb", "1764550000000-0", 2000),
        ("message", "no event name", None, None),
    ]


def mock(handler: object) -> Client:
    return Client("http://worker", api_key="k-123", reconnect=FAST, transport=httpx.MockTransport(handler))  # type: ignore[arg-type]


def test_unknown_events_pass_through_and_opaque_ids_resume() -> None:
    seen_headers: list[dict[str, str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen_headers.append(dict(request.headers))
        if len(seen_headers) == 1:  # the first connection ends early, mid-job
            body = frame("1764550000001-0", "loading_model", model="demo") + frame(
                "1764550000002-0", "progress", step=1, total=2, percent=50.0
            )
        else:
            body = frame("1764550000002-0", "progress", step=1, total=2) + COMPLETE  # a repeat is dropped
        return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})

    with mock(handler) as client:
        events = list(client.events("j1"))
    assert isinstance(events[0], OtherEvent) and events[0].name == "loading_model" and events[0].data["model"] == "demo"
    assert isinstance(events[1], StepProgressed) and events[1].id == "1764550000002-0"
    assert isinstance(events[2], JobCompleted) and events[2].images()[0].size == (8, 8)
    assert len(events) == 3
    assert seen_headers[0]["authorization"] == "Bearer k-123" and "last-event-id" not in seen_headers[0]
    assert seen_headers[1]["last-event-id"] == "1764550000002-0"


def test_an_error_event_raises_with_its_code() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=frame("3", "error", code="generation_failed", message="generation failed: X"))

    with mock(handler) as client, pytest.raises(JobFailed) as raised:
        list(client.events("j1"))
    assert (raised.value.code, raised.value.message, raised.value.event_id) == ("generation_failed",
                                                                                "generation failed: X", "3")


def test_reconnects_are_bounded_and_a_finished_stream_is_204() -> None:
    calls = []

    def failing(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ConnectError("refused")

    with mock(failing) as client, pytest.raises(ConnectionLost) as lost:
        list(client.events("j1"))
    assert len(calls) == 3 and isinstance(lost.value.__cause__, httpx.ConnectError)  # 1 + 2 reconnects

    answers = iter([httpx.Response(503, json={"error": {"code": "not_ready", "message": "loading"}}),
                    httpx.Response(204)])
    with mock(lambda request: next(answers)) as client:
        assert list(client.events("j1", last_event_id="7")) == []


def test_error_bodies_map_to_the_exception_tree() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/jobs":
            error = {"code": "invalid_request", "message": "steps: 0", "field": "steps"}
            return httpx.Response(422, json={"error": error})
        if request.url.path == "/v1/info":
            return httpx.Response(401, json={"error": {"code": "unauthorized", "message": "bad key"}})
        return httpx.Response(404, json={"error": {"code": "job_not_found", "message": "no job"}, "code": "x"})

    with mock(handler) as client:
        with pytest.raises(BadRequest) as bad:
            client.submit("a cat", steps=0)
        assert (bad.value.code, bad.value.field, bad.value.status_code) == ("invalid_request", "steps", 422)
        with pytest.raises(Unauthorized):
            client.info()
        with pytest.raises(NotFound) as missing:
            client.get("nope")
        assert missing.value.code == "job_not_found"


def test_retry_after_as_seconds_or_date() -> None:
    request = httpx.Request("POST", "http://worker/v1/jobs")
    assert retry_after_seconds(httpx.Response(429, headers={"Retry-After": "7"}, request=request)) == 7.0
    assert retry_after_seconds(httpx.Response(429, request=request)) == 1.0
    now = datetime(2026, 1, 1, tzinfo=UTC)
    date = format_datetime(now + timedelta(seconds=30), usegmt=True)
    assert retry_after_seconds(httpx.Response(429, headers={"Retry-After": date}, request=request),
                               now=now.timestamp) == pytest.approx(30.0)


def test_submit_sends_only_given_fields_and_one_idempotency_key_per_call() -> None:
    bodies: list[tuple[dict[str, object], str]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append((json.loads(request.content), request.headers["idempotency-key"]))
        if len(bodies) == 1:
            raise httpx.ReadError("connection reset")  # the answer is lost: the retry carries the same key
        return httpx.Response(202, json={"job_id": "j9", "sse_url": "/v1/jobs/j9/stream", "status": "queued",
                                         "queue_position": 1})

    with mock(handler) as client:
        job = client.submit("a cat", steps=4, init_image=b"\x89PNG...", preview={"every": 0, "format": None})
    assert job.job_id == "j9" and job.queue_position == 1
    (first, key1), (second, key2) = bodies
    assert first == second and key1 == key2
    assert first == {"prompt": "a cat", "steps": 4, "init_image": base64.b64encode(b"\x89PNG...").decode(),
                     "preview": {"every": 0}, "operation": "image_transform"}


def test_models_loras_and_the_openapi_document() -> None:
    answers = {
        "/v1/models": {"object": "list", "data": [{"id": "demo", "architecture": "sd1", "default": True}]},
        "/v1/loras": {"object": "list", "data": [{"name": "demo-peft", "family": "sd1", "format": "peft"}]},
        "/openapi.json": {"openapi": "3.1.0", "paths": {}},
    }

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=answers[request.url.path])

    with mock(handler) as client:
        assert client.models() == answers["/v1/models"]["data"]
        assert client.loras() == answers["/v1/loras"]["data"]
        assert client.openapi()["openapi"] == "3.1.0"


def test_job_body_encodes_edit_ip_adapter_and_upscale_images() -> None:
    from sdworker.client.wire import job_body

    image = Image.new("RGB", (8, 8), (1, 2, 3))
    edit = job_body("make it red", {"reference_images": [image, b"\x89PNG..."], "model": "kontext"})
    assert edit["operation"] == "image_edit" and len(edit["reference_images"]) == 2
    assert base64.b64decode(edit["reference_images"][1]) == b"\x89PNG..."
    adapter = job_body("a cat", {"ip_adapter": {"model": "ip", "images": [image], "scale": 0.5}})
    assert "operation" not in adapter  # text-to-image: the server's default
    assert adapter["ip_adapter"]["scale"] == 0.5 and isinstance(adapter["ip_adapter"]["images"][0], str)
    with Image.open(io.BytesIO(base64.b64decode(adapter["ip_adapter"]["images"][0]))) as decoded:
        assert decoded.size == (8, 8)
    upscale = job_body("", {"init_image": image, "upscaler": "Lanczos"})
    assert upscale["operation"] == "image_upscale"

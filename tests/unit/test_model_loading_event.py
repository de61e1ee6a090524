"""``ModelLoading``: its SSE frame, its trip through a Redis stream entry, and the client's typed event."""

from __future__ import annotations

import json

from sdworker.api.sse import frame
from sdworker.client.events import ModelLoading as ClientModelLoading
from sdworker.client.events import ServerSentEvent, to_event
from sdworker.events.types import ModelLoading
from sdworker.stores.redis.codec import decode_event, event_fields


def test_the_frame_the_redis_entry_and_the_client_agree() -> None:
    event = ModelLoading(job_id="j", seq=3, at=1.5, model="demo-sdxl", phase="finished", seconds=0.25)
    wire = frame(event).decode()
    assert wire.startswith("id: 3\nevent: loading_model\ndata: ")
    data = json.loads(wire.split("data: ", 1)[1])
    assert data == {"type": "loading_model", "model": "demo-sdxl", "phase": "finished", "seconds": 0.25, "at": 1.5}

    kind, fields, step, total, image = event_fields(event)
    assert (kind, step, total, image) == ("loading_model", 0, 0, None)  # step 0: the job's step is untouched
    entry = {b"t": kind.encode(), b"d": json.dumps(fields).encode(), b"at": b"1.5"}
    assert decode_event("j", "0-3", entry, None, ()) == event

    typed = to_event(ServerSentEvent("loading_model", wire.split("data: ", 1)[1].strip(), "3"), "j")
    assert typed == ClientModelLoading(job_id="j", id="3", at=1.5, model="demo-sdxl", phase="finished", seconds=0.25)

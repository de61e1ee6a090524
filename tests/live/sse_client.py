"""A small SSE reader over httpx streaming, recording when each event arrived."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Received:
    id: int
    name: str
    data: Any  # parsed JSON; for the closing `end` event, rbee's marker (a string)
    at: float  # time.time() on receipt


async def read_events(
    client: httpx.AsyncClient, url: str, *, last_event_id: int | None = None, stop_after: int | None = None
) -> list[Received]:
    """Events until the stream ends (or ``stop_after`` events, then disconnect)."""
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    events: list[Received] = []
    async with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200, response.status_code
        block: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if "event" in block:
                    raw = block["data"]
                    data = raw if block["event"] == "end" else json.loads(raw)
                    events.append(Received(int(block.get("id", 0)), block["event"], data, time.time()))  # notice: no id
                    if stop_after is not None and len(events) >= stop_after:
                        break
                block = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(":")
                block[key] = value[1:] if value.startswith(" ") else value
    return events

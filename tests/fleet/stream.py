"""Reading a job's SSE stream from a real node, notices (no id) included, and polling helpers."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import httpx

SMALL = {"width": 64, "height": 64, "preview": {"every": 0}}


@dataclass
class Ev:
    id: int | None
    name: str
    data: Any


@dataclass
class Watcher:
    """Events as they arrive (``events`` grows while the task runs)."""

    events: list[Ev] = field(default_factory=list)

    def names(self) -> list[str]:
        return [e.name for e in self.events]

    def ids(self) -> list[int]:
        return [e.id for e in self.events if e.id is not None]

    def count(self, name: str) -> int:
        return sum(1 for e in self.events if e.name == name)


async def watch(client: httpx.AsyncClient, url: str, watcher: Watcher, *, last_event_id: int | None = None,
                stop_after: int | None = None) -> Watcher:
    """Read until the stream ends (or ``stop_after`` events with ids)."""
    headers = {"Last-Event-ID": str(last_event_id)} if last_event_id is not None else {}
    async with client.stream("GET", url, headers=headers, timeout=httpx.Timeout(120.0)) as response:
        assert response.status_code == 200, response.status_code
        block: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line == "":
                if "event" in block:
                    raw = block.get("data", "")
                    data = raw if block["event"] == "end" else json.loads(raw)
                    watcher.events.append(Ev(int(block["id"]) if "id" in block else None, block["event"], data))
                    if stop_after is not None and len(watcher.ids()) >= stop_after:
                        break
                block = {}
            elif not line.startswith(":"):
                key, _, value = line.partition(":")
                block[key] = value[1:] if value.startswith(" ") else value
    return watcher


async def submit(client: httpx.AsyncClient, base: str, steps: int, seed: int = 11, **extra: Any) -> str:
    response = await client.post(f"{base}/v1/jobs", json={"prompt": "a lighthouse", "steps": steps, "seed": seed,
                                                         **SMALL, **extra})
    assert response.status_code == 202, response.text
    return str(response.json()["job_id"])


async def job(client: httpx.AsyncClient, base: str, job_id: str) -> dict[str, Any]:
    response = await client.get(f"{base}/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def until(predicate: Any, timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll an async predicate until it returns something truthy."""
    try:
        async with asyncio.timeout(timeout):
            while not (value := await predicate()):
                await asyncio.sleep(0.05)
            return value
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None

"""``/health`` does not wait behind a burst of requests that arrived with it: ``HealthFirst`` answers it
at once and lets the others on a few per turn of the event loop (``SetupPacer``), in arrival order.
The ASGI calls are driven directly, because what is asserted is the order in which one event loop
serves requests that arrive in the same turn (an HTTP client cannot line them up that exactly)."""

from __future__ import annotations

import asyncio
from typing import Any

from sdworker.api.routes_system import HealthFirst, SetupPacer

BURST = 40
PER_TURN = 4


def http_scope(path: str) -> dict[str, Any]:
    return {"type": "http", "method": "GET", "path": path, "headers": []}


async def test_health_is_answered_before_the_burst_that_arrived_with_it_is_set_up() -> None:
    order: list[str] = []

    async def heavy_app(scope: Any, receive: Any, send: Any) -> None:
        order.append(scope["path"])  # a stream's set-up: synchronous work on the loop

    guard = HealthFirst(heavy_app, per_turn=PER_TURN)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def health_send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            order.append(f"health {message['status']}")

    async def no_send(message: dict[str, Any]) -> None:
        pass

    # All in one turn, the burst first, as when their bytes come in together.
    tasks = [asyncio.create_task(guard(http_scope(f"/v1/jobs/j/stream#{i}"), receive, no_send)) for i in range(BURST)]
    tasks.append(asyncio.create_task(guard(http_scope("/health"), receive, health_send)))
    await asyncio.gather(*tasks)
    assert "health 200" in order
    assert order.index("health 200") <= PER_TURN, order  # without the pacer: after all 40
    streams = [path for path in order if path.startswith("/v1/")]
    assert streams == [f"/v1/jobs/j/stream#{i}" for i in range(BURST)]  # every one, first come first served


async def test_a_caller_that_leaves_while_waiting_does_not_hold_up_the_others() -> None:
    pacer = SetupPacer(per_turn=1)
    went: list[int] = []

    async def caller(i: int) -> None:
        await pacer.turn()
        went.append(i)

    tasks = [asyncio.create_task(caller(i)) for i in range(6)]
    await asyncio.sleep(0)  # the first goes on; the rest wait
    tasks[2].cancel()
    tasks[3].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    assert went == [0, 1, 4, 5]
    await pacer.turn()  # out of a burst nothing waits

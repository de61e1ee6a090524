"""A real HTTP receiver for webhooks (the standard library's threading server on a free port): it keeps
every request it got and answers each with the next status of its script (then 200)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    answered: int

    @property
    def payload(self) -> dict[str, Any]:
        return dict(json.loads(self.body))

    @property
    def event(self) -> str:
        return str(self.payload["type"])


class Receiver:
    def __init__(self) -> None:
        self.received: list[Received] = []
        self.script: list[int] = []  # statuses to answer with, in order; 200 once it is used up
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with receiver._lock:
                    status = receiver.script.pop(0) if receiver.script else 200
                    headers = {k.lower(): v for k, v in self.headers.items()}
                    receiver.received.append(Received(headers, body, status))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hook"

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    async def wait_for(self, predicate: Any, timeout: float = 30.0) -> list[Received]:
        """Wait (without blocking the event loop the app under test runs on) until ``predicate(got)``."""
        deadline = time.monotonic() + timeout
        while not predicate(got := self.snapshot()):
            if time.monotonic() > deadline:
                raise AssertionError(f"the receiver did not get what was expected in {timeout} s; it got {got!r}")
            await asyncio.sleep(0.05)
        return got


def verified(secret: str, request: Received) -> dict[str, Any]:
    """The payload, after the independent verifier checked the signature (raises if it does not hold)."""
    return dict(Webhook(secret).verify(request.body, request.headers))


@contextmanager
def receiving() -> Iterator[Receiver]:
    receiver = Receiver()
    thread = threading.Thread(target=receiver._server.serve_forever, daemon=True)
    thread.start()
    try:
        yield receiver
    finally:
        receiver._server.shutdown()
        receiver._server.server_close()

"""uvicorn's h11 protocol with a deadline on reading a request head (request line + headers).

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no timeout while a request
head arrives: its keep-alive timer is cancelled by the first byte, and a fresh connection has no
timer at all. A client that opens thousands of connections and sends one header byte every few
seconds (slowloris) would keep them all open. Here each request head must be complete within
``header_timeout_seconds`` of the connection opening, or of the previous response ending for a
keep-alive connection; otherwise the connection is closed. The deadline is fixed when the head
starts, so trickling bytes does not extend it. Bodies and responses are not covered: the app bounds
bodies by size, and SSE responses are long-lived on purpose.
"""

from __future__ import annotations

import asyncio
import logging
from typing import ClassVar

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger("sdworker.http")


class GuardedH11Protocol(H11Protocol):
    """``H11Protocol`` plus the request-head deadline (a class attribute: uvicorn builds one
    protocol object per connection from the class, with no way to pass extra arguments)."""

    header_timeout_seconds: ClassVar[float] = 10.0
    # h11 bounds only a head that is still incomplete: one arriving whole in a single read (a 200 KiB
    # header line sent at once) passed. Counted here as it arrives, whatever the reads.
    max_head_bytes: ClassVar[int] = 64 * 1024
    _head_deadline: asyncio.TimerHandle | None = None
    _head_size = 0
    _head_tail = b""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        if self.conn.their_state is h11.IDLE and self._head_too_large(data):
            log.debug("closing a connection whose request head is above %d bytes", self.max_head_bytes)
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            self.transport.close()
            return
        super().data_received(data)
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self._arm()  # a head is (still) arriving
        else:
            self._disarm()  # the head is complete (or the connection is done)

    def _head_too_large(self, data: bytes) -> bool:
        window = self._head_tail + data
        end = window.find(b"\r\n\r\n")
        if end < 0:
            self._head_size += len(data)
            self._head_tail = window[-3:]
            return self._head_size > self.max_head_bytes
        size = self._head_size + end + 4 - len(self._head_tail)
        self._head_size, self._head_tail = 0, b""  # the head ends here; what follows is a body
        return size > self.max_head_bytes

    def on_response_complete(self) -> None:
        super().on_response_complete()
        # A keep-alive connection waits for the next head: uvicorn's keep-alive timer covers silence,
        # ours covers a head that starts but never ends.
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._head_deadline is None:
            self._head_deadline = self.loop.call_later(self.header_timeout_seconds, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_deadline is not None:
            self._head_deadline.cancel()
            self._head_deadline = None

    def _head_timed_out(self) -> None:
        self._head_deadline = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.debug("closing a connection whose request head took over %s s", self.header_timeout_seconds)
            self.transport.close()

"""The fan-out's floor: the same bytes to the same clients from a bare server that does nothing else.

``bench/service.py`` measures how long a job's last frames take to reach 1,000 watchers. Part of that
is only the bytes: a ``complete`` frame of about 200 KB a thousand times through loopback, to clients
that share the server's cores. This server (uvloop, like ``serve``) answers every request but
``/health`` with an SSE head and keeps the connection; on release it stamps the publish time and
writes each stream a ``complete`` frame of the job's size, ``end`` and the body's end, in one write.
Read by the same clients (``bench/watchers.py: fan_out``) in the same run, the ratio of the two
delays is what sdworker adds to the bytes' own cost, however loaded the machine is.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import time
from typing import Any

from bench.watchers import _recv, client_loop_run, fan_out

STREAM_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
HEALTH = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{\"status\":\"ok\"}"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def final_frames(image_chars: int, at: float) -> bytes:
    """A ``complete`` frame whose base64 image has ``image_chars`` characters, then ``end``, as one chunk,
    then the body's end: what ``serve`` writes each watcher when a job ends."""
    data = {"type": "complete", "image": "A" * image_chars, "format": "png", "at": at}
    frames = f"id: 1\nevent: complete\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"
    return chunk(f"{frames}id: 2\nevent: end\ndata: [DONE]\n\n".encode()) + b"0\r\n\r\n"


class BareHttp(asyncio.Protocol):
    """Just enough HTTP/1.1 for the bench's clients: request heads, no bodies."""

    def __init__(self, streams: list[asyncio.Transport]) -> None:
        self.streams = streams
        self.pending = b""
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.pending += data
        while (cut := self.pending.find(b"\r\n\r\n")) >= 0:
            head, self.pending = self.pending[:cut], self.pending[cut + 4 :]
            target = head.split(b" ", 2)[1:2]
            if target == [b"/health"]:
                self.transport.write(HEALTH)
            else:
                self.transport.write(STREAM_HEAD + chunk(b"retry: 2000\n\n"))
                self.streams.append(self.transport)


def serve(pipe: Any) -> None:
    """The bare server's process: sends its port; writes the final frames on the image size it is
    sent; stops on "stop"."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        streams: list[asyncio.Transport] = []
        server = await loop.create_server(lambda: BareHttp(streams), "127.0.0.1", 0, backlog=4096)
        pipe.send(server.sockets[0].getsockname()[1])
        image_chars = await loop.run_in_executor(None, pipe.recv)
        payload = final_frames(image_chars, time.time())
        for transport in streams:
            if not transport.is_closing():
                transport.write(payload)
        await loop.run_in_executor(None, pipe.recv)
        server.close()

    client_loop_run(main())


async def floor_fan_out(watchers: int, image_chars: int, *, client_processes: int = 4) -> dict[str, Any]:
    """``fan_out``'s result for the bare server: ``watchers`` clients, one final frame each."""
    context = multiprocessing.get_context("spawn")
    ours, theirs = context.Pipe()
    process = context.Process(target=serve, args=(theirs,), daemon=True)
    process.start()
    try:
        port = await _recv(ours, 120)

        async def release() -> None:
            ours.send(image_chars)

        return await fan_out([f"http://127.0.0.1:{port}"], [process.pid], "floor", watchers, release,
                             client_processes=client_processes)
    finally:
        ours.send("stop")
        process.join(5)
        if process.is_alive():
            process.kill()

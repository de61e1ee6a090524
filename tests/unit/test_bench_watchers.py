"""The bench's SSE client (``bench/watchers.py: SseWatcher``): what the 1,000-watcher figures are read
with must parse every frame wherever the reads cut the bytes, or the bench reports wrong delays."""

from __future__ import annotations

import asyncio
import json

import pytest

from bench.floor import final_frames
from bench.watchers import SseWatcher, StreamRefused, frame_end

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n"


def progress(seq: int, at: float) -> bytes:
    return f"id: {seq}\nevent: progress\ndata: {json.dumps({'step': seq, 'at': at})}\n\n".encode()


class Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


def feed(watcher: SseWatcher, data: bytes, piece: int) -> None:
    """``data`` as the kernel would hand it over, ``piece`` bytes per read at most."""
    at = 0
    while at < len(data):
        view = watcher.get_buffer(-1)
        size = min(piece, len(view), len(data) - at)
        view[:size] = data[at : at + size]
        del view
        watcher.buffer_updated(size)
        at += size


def test_frame_end_finds_the_blank_line_after_a_long_line() -> None:
    frame = b"id: 1\nevent: complete\ndata: " + b"A" * 300_000 + b"\n\nid: 2\n"
    assert frame_end(frame, 0, len(frame)) == frame.index(b"\n\n")
    assert frame_end(frame, 0, frame.index(b"\n\n") + 1) == -1  # the blank line not here yet
    assert frame_end(frame, frame.index(b"\n\n") + 2, len(frame)) == -1


@pytest.mark.parametrize("piece", [1, 7, 4096, 65536, 1 << 20])
async def test_every_frame_is_read_wherever_the_reads_cut_the_bytes(piece: int) -> None:
    body = HEAD + chunk(b"retry: 2000\n\n") + chunk(progress(1, 10.0) + progress(2, 11.0))
    # A frame cut by a chunk's end (a server may write a frame in two pieces), then the final frames.
    third = progress(3, 12.0)
    body += chunk(third[:9]) + chunk(third[9:]) + final_frames(300_000, 13.0)
    watcher = SseWatcher(b"GET / HTTP/1.1\r\n\r\n")
    transport = Transport()
    watcher.connection_made(transport)  # type: ignore[arg-type]
    feed(watcher, body, piece)
    assert watcher.head.done() and watcher.done.done()
    events = watcher.done.result()
    assert [(seq, name, at) for seq, name, at, _ in events] == [
        (1, "progress", 10.0), (2, "progress", 11.0), (3, "progress", 12.0), (1, "complete", 13.0), (2, "end", 13.0),
    ]
    assert transport.written == [b"GET / HTTP/1.1\r\n\r\n"] and transport.closed


async def test_a_refused_stream_and_a_broken_one() -> None:
    refused = SseWatcher(b"GET")
    refused.connection_made(Transport())  # type: ignore[arg-type]
    feed(refused, b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n", 64)
    with pytest.raises(StreamRefused, match="503"):
        await refused.head
    broken = SseWatcher(b"GET")
    broken.connection_made(Transport())  # type: ignore[arg-type]
    feed(broken, HEAD + chunk(progress(1, 1.0)), 64)
    broken.connection_lost(None)  # what arrived is reported, without an end
    assert [name for _, name, _, _ in await asyncio.wait_for(broken.done, 1)] == ["progress"]

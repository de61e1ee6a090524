"""The 64 KiB bound on a request head holds when the head arrives in one write, not only trickled."""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .test_never_stuck import start

pytestmark = [pytest.mark.live]


def send(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(data)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_a_head_above_64_kib_in_one_write_is_refused(tmp_path: Path) -> None:
    process, url = start(tmp_path)
    try:
        port = urlsplit(url).port
        assert port is not None
        head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        assert send(port, head + b"X-Big: " + b"a" * 100 * 1024 + b"\r\n\r\n").startswith(b"HTTP/1.1 431")
        assert send(port, head + b"X-Ok: " + b"a" * 8 * 1024 + b"\r\n\r\n").startswith(b"HTTP/1.1 200")
    finally:
        process.kill()
        process.wait()

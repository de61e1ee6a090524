"""Running an app under uvicorn, for ``serve`` and ``api``: logging set-up and a server whose first
exit signal drains the node before uvicorn shuts down. Torch-free (the API node imports it).

Shutdown, and why it is hooked here: on SIGTERM/Ctrl-C uvicorn stops listening and then waits for
open connections to close *before* it runs the app's lifespan shutdown - and an SSE stream never
closes by itself. So the first signal starts ``Node.drain`` first, and only then lets uvicorn exit.
A second Ctrl-C forces the exit; a repeated SIGTERM does not. The process exits 0 after the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn
from fastapi import FastAPI
from starlette.types import ASGIApp

from sdworker.cli.http_protocol import GuardedH11Protocol
from sdworker.settings import Settings

log = logging.getLogger("sdworker.serve")


class DrainingServer(uvicorn.Server):
    """A uvicorn server whose first exit signal drains the worker before uvicorn shuts down."""

    def __init__(self, config: uvicorn.Config, drain: Callable[[], Awaitable[None]]) -> None:
        super().__init__(config)
        self._drain = drain
        self._loop: asyncio.AbstractEventLoop | None = None
        self._drain_task: asyncio.Task[None] | None = None
        self._exit_requested = False

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # Not recorded in _captured_signals: uvicorn would re-raise it after shutdown and the process
        # would die of SIGTERM instead of exiting 0 after a clean drain.
        if self._loop is None:
            self.should_exit = True
        elif not self._exit_requested:
            self._exit_requested = True
            self._loop.call_soon_threadsafe(self._start_drain)
        elif sig == signal.SIGINT:
            # A second Ctrl-C: stop now (as uvicorn does). A repeated SIGTERM (a supervisor and a
            # wrapper both forwarding one) does not cut the drain short.
            self.should_exit = True
            self.force_exit = True

    def _start_drain(self) -> None:
        if self._drain_task is None:
            self._drain_task = asyncio.get_running_loop().create_task(self._drain_then_exit(), name="sdworker-drain")

    async def _drain_then_exit(self) -> None:
        try:
            await self._drain()
        except Exception:
            log.exception("draining failed; exiting anyway")
        finally:
            self.should_exit = True


def configure_logging(args: argparse.Namespace) -> str:
    level = str(getattr(args, "log_level", None) or "info").upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return level


class TokenFreeAccessLog(logging.Filter):
    """Takes the query string's ``token`` out of uvicorn's access log lines: a signed URL's token
    opens a job's stream and images without a key, so the log must not hand it to whoever reads the
    logs. The path and the other parameters stay (``?token=<redacted>&index=0``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        # uvicorn.access logs (client, method, full path with query, HTTP version, status).
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str) and "token=" in args[2]:
            record.args = (*args[:2], redact_token(args[2]), *args[3:])
        return True


_TOKEN_PARAM = re.compile(r"([?&]token=)[^&#]*", re.IGNORECASE)


def redact_token(path: str) -> str:
    return _TOKEN_PARAM.sub(r"\1<redacted>", path)


MAX_HEAD_BYTES = 64 * 1024  # request line + headers; browsers send a few KiB, big cookies up to ~16 KiB


def uvicorn_config(app: ASGIApp, settings: Settings, log_level: str) -> uvicorn.Config:
    """The uvicorn settings of every HTTP process (``serve``, ``api``), hardened at the socket:

    - h11, not httptools: it bounds the request line + headers (``h11_max_incomplete_event_size``,
      then ``400`` and close), so a 64 MiB header line costs one buffer of that size, not 64 MiB;
    - ``GuardedH11Protocol`` closes a connection whose request head has not fully arrived within
      ``header_timeout_seconds`` (uvicorn has no such timeout: slowloris connections trickling
      headers would stay open forever);
    - bodies are bounded by the app (``max_body_bytes``, a deadline), streams by the job layer;
    - the access log never shows a signed URL's token (``TokenFreeAccessLog``).
    """
    GuardedH11Protocol.header_timeout_seconds = settings.header_timeout_seconds
    GuardedH11Protocol.max_head_bytes = MAX_HEAD_BYTES
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        lifespan="on",
        http=GuardedH11Protocol,
        h11_max_incomplete_event_size=MAX_HEAD_BYTES,
        timeout_graceful_shutdown=10,  # a safety net: after the drain no stream is left to wait for
        timeout_keep_alive=5,
        server_header=False,
    )
    # After uvicorn's own logging set-up (in Config's constructor), which would not keep a filter
    # installed earlier on a logger it configures.
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, TokenFreeAccessLog) for f in access.filters):
        access.addFilter(TokenFreeAccessLog())
    return config


def serve_app(app: FastAPI, settings: Settings, level: str) -> None:
    """Run ``app`` under uvicorn, draining the node on the first exit signal.

    Once uvicorn has run the lifespan's shutdown (``Node.stop``: every stream ended, the running job
    finished or handed back, the store closed), the process exits at once with ``os._exit``: what is
    left is the interpreter's teardown of torch and its thread pools, which took seconds after a
    clean drain (issue #20: the process exited 5 s after its streams had ended). Nothing is lost by
    skipping it: logs are flushed first, and the stores flush on every terminal write."""
    node = app.state.node
    server = DrainingServer(uvicorn_config(app, settings, level.lower()), drain=node.drain)
    node.request_exit = lambda: server.handle_exit(signal.SIGTERM, None)
    node.freeze_heap_once_loaded()
    server.run()
    if not server.started:
        return  # start-up failed (uvicorn logged why); the ordinary exit path reports it
    if node.must_exit_hard:
        # Only the stuck or dead GPU thread is left, and the interpreter would join it forever.
        log.warning("exiting without waiting for the generation thread (code %d)", node.exit_code)
    log.info("stopped (exit code %d)", node.exit_code)
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(node.exit_code)

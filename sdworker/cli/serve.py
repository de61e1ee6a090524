"""``sdworker serve``: the HTTP service and one generation worker in one process, under uvicorn.

Shutdown, and why it is hooked here: on SIGTERM/Ctrl-C uvicorn stops listening and then waits for
open connections to close *before* it runs the app's lifespan shutdown - and an SSE stream never
closes by itself. So the first signal starts ``Worker.drain`` first (no new jobs, ``/ready`` 503;
queued jobs end with ``error`` ``shutting_down``; the running job gets ``shutdown_grace_seconds`` to
finish, else it is cancelled within a step; every stream ends), and only then lets uvicorn exit. A
second Ctrl-C forces the exit; a repeated SIGTERM does not. The process exits 0 after the drain.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from types import FrameType

import uvicorn

from sdworker.api.app import create_app
from sdworker.cli import settings_from_args

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


def run_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    level = str(getattr(args, "log_level", "info")).upper()
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Imported here: torch and diffusers load only when a server really starts.
    from sdworker.engine.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine(settings)
    app = create_app(settings, engine)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=level.lower(),
        lifespan="on",
        timeout_graceful_shutdown=10,  # a safety net: after the drain no stream is left to wait for
        timeout_keep_alive=5,
    )
    server = DrainingServer(config, drain=app.state.node.drain)
    log.info("sdworker serving model %r on http://%s:%d", settings.model, settings.host, settings.port)
    server.run()
    return 0

"""Fixtures for the page tests: a real ``sdworker serve --model demo`` and Debian's Chromium, headless.

The server runs as a subprocess (real uvicorn, real SSE) on a free port with the session's demo model
cache, so the model is built once. The browser is Debian's /usr/bin/chromium driven by Playwright;
nothing is downloaded. Screenshots go to test-output/page/ (git-ignored).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live.chromium import CHROMIUM, CHROMIUM_ARGS
from live.server import LiveServer, free_port

REPO = Path(__file__).resolve().parents[2]
SHOTS = REPO / "test-output" / "page"
# Long enough jobs for cancel and reload tests come from many steps; the default limit is 150.
MAX_STEPS = 2000
MAX_QUEUE = 2


@pytest.fixture(scope="session")
def server(demo_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of a live ``sdworker serve --model demo``; its log is shown if it fails to start."""
    log_path = tmp_path_factory.mktemp("page-server") / "server.log"
    live = LiveServer(
        demo_cache_dir, free_port(), "--max-steps", str(MAX_STEPS), "--max-queue", str(MAX_QUEUE),
        "--log-level", "warning", log_path=log_path,
    )
    try:
        live.wait_ready()
        yield live.url
    finally:
        live.stop(timeout=20)


# Module scope, not session: Playwright's sync API keeps an asyncio loop marked as running in the main
# thread while it is open, and pytest-asyncio cannot run the async tests of later modules beside it.
@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed (`make system-deps` installs it)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture(scope="session")
def shots() -> Path:
    SHOTS.mkdir(parents=True, exist_ok=True)
    return SHOTS


# Records every src the result image takes (preview or final) as the page sets it, so a test can
# show previews changed in place before the final image.
RECORD_IMAGES = """
window.__images = [];
document.addEventListener("DOMContentLoaded", () => {
  const img = document.getElementById("result-image");
  new MutationObserver(() => {
    if (!img.getAttribute("src")) return;
    window.__images.push({src: img.src, preview: img.classList.contains("is-preview"),
                          caption: document.getElementById("result-caption").textContent});
  }).observe(img, {attributes: true, attributeFilter: ["src"]});
});
"""


class PageDriver:
    """A Playwright page on the live server plus the few steps every test repeats."""

    def __init__(self, page: Any, base: str, shots: Path) -> None:
        self.page = page
        self.base = base
        self.shots = shots
        self.page_errors: list[str] = []
        page.on("pageerror", lambda exc: self.page_errors.append(str(exc)))
        page.add_init_script(RECORD_IMAGES)

    def open(self, fragment: str = "") -> None:
        self.page.goto(f"{self.base}/{fragment}")
        self.page.wait_for_function("document.getElementById('server-status').textContent.startsWith('Ready')")

    def fill(self, **values: object) -> None:
        for field_id, value in values.items():
            self.page.fill(f"#{field_id}", str(value))

    def set_range(self, field_id: str, value: float) -> None:
        """Set a slider as a person would end up (value changed, then an input event)."""
        self.page.eval_on_selector(
            f"#{field_id}", "(el, v) => { el.value = v; el.dispatchEvent(new Event('input', {bubbles: true})); }", value
        )

    def previews(self, every: int = 1, interval_ms: int = 0, fmt: str = "jpeg", method: str | None = None) -> None:
        self.page.click("#preview-settings summary")
        self.fill(**{"preview-every": every, "preview-interval": interval_ms})
        self.page.select_option("#preview-format", fmt)
        if method is not None:
            self.page.select_option("#preview-method", method)

    def mode(self, name: str) -> None:
        self.page.check(f'input[name="mode"][value="{name}"]')

    def job_id(self) -> str:
        self.page.wait_for_function("location.hash.startsWith('#job=')")
        return str(self.page.evaluate("decodeURIComponent(location.hash.slice(5))"))

    def status(self) -> str:
        return str(self.page.inner_text("#job-status"))

    def wait_status(self, pattern: str, timeout_ms: int = 60_000) -> str:
        """Wait until the job status line matches the regular expression ``pattern``."""
        self.page.wait_for_function(
            "p => new RegExp(p).test(document.getElementById('job-status').textContent)",
            arg=pattern,
            timeout=timeout_ms,
        )
        return self.status()

    def wait_step(self, at_least: int, timeout_ms: int = 30_000) -> None:
        self.page.wait_for_function(
            "n => Number(document.getElementById('progress').value) >= n", arg=at_least, timeout=timeout_ms
        )

    def images(self) -> list[dict[str, Any]]:
        return list(self.page.evaluate("window.__images"))

    def shot(self, name: str, full_page: bool = False) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path


@pytest.fixture()
def ui(browser: Any, server: str, shots: Path) -> Iterator[PageDriver]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30_000)
    driver = PageDriver(page, server, shots)
    yield driver
    context.close()
    assert not driver.page_errors, f"uncaught errors in the page: {driver.page_errors}"


def cancel_everything(base: str) -> None:
    """Leave the shared server idle for the next test."""
    jobs = httpx.get(f"{base}/v1/jobs", timeout=5).json()
    for job in jobs.get("jobs", jobs) if isinstance(jobs, dict) else jobs:
        if job.get("status") in ("queued", "running"):
            httpx.delete(f"{base}/v1/jobs/{job['job_id']}", timeout=5)


class CuttableProxy:
    """A TCP proxy in front of the server whose connections the test can cut, as a network would.

    ``cut(refuse_seconds)`` closes every open connection (the browser sees its stream drop) and then
    turns new connections away for a while, so the page's "reconnecting" state can be seen.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.refuse_until = 0.0
        self.open: set[socket.socket] = set()
        self.requests: list[str] = []  # request heads the browser sent, to see what it asked for
        self.lock = threading.Lock()
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if time.monotonic() < self.refuse_until:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.open.update((client, upstream))
            threading.Thread(target=self._pipe, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pipe, args=(upstream, client), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, from_browser: bool = False) -> None:
        try:
            while chunk := src.recv(65536):
                if from_browser and chunk[:4] in (b"GET ", b"POST", b"DELE"):
                    self.requests.append(chunk.split(b"\r\n\r\n", 1)[0].decode("latin-1"))
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self.lock:
                self.open.difference_update((src, dst))

    def cut(self, refuse_seconds: float) -> None:
        self.refuse_until = time.monotonic() + refuse_seconds
        with self.lock:
            sockets = list(self.open)
        for s in sockets:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.cut(0)


@pytest.fixture()
def proxy(server: str) -> Iterator[CuttableProxy]:
    p = CuttableProxy(int(server.rsplit(":", 1)[1]))
    yield p
    p.close()

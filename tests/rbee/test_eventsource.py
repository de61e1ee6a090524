"""Chromium's EventSource against a real server: the closing ``end`` event (rbee's marker) reaches
neither ``onmessage`` nor the typed listeners; a listener for ``end`` gets the marker; after the end
the browser's reconnect (``Last-Event-ID`` = the end's id) gets 204 and EventSource closes."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from live.chromium import CHROMIUM, CHROMIUM_ARGS
from live.server import free_port

from sdworker.api.app import create_app
from sdworker.engine.fake import FakeEngine
from sdworker.settings import Settings

pytestmark = [pytest.mark.live, pytest.mark.browser, pytest.mark.slow]

PAGE = """<!DOCTYPE html><html><body><script>
function watch(id) {
  const seen = { typed: [], message: [], end: [], closed: false };
  const es = new EventSource("BASE/v1/jobs/" + id + "/stream");
  for (const name of ["queued", "started", "progress", "preview", "complete"]) {
    es.addEventListener(name, () => seen.typed.push(name));
  }
  es.addEventListener("error", (e) => {
    if (typeof e.data === "string") seen.typed.push("error");
    else if (es.readyState === EventSource.CLOSED) seen.closed = true;
  });
  es.onmessage = (e) => seen.message.push(e.data);
  const markers = new EventSource("BASE/v1/jobs/" + id + "/stream");
  markers.addEventListener("end", (e) => { seen.end.push([e.data, e.lastEventId]); markers.close(); });
  return seen;
}
window.seen = { done: watch("DONE_ID"), cancelled: watch("CANCELLED_ID") };
</script></body></html>"""


@pytest.fixture
def server() -> Iterator[tuple[str, threading.Event]]:
    gate = threading.Event()
    port = free_port()
    # The page is a file:// page (Origin "null"): CORS must list it, as for the reference test page.
    settings = Settings(port=port, preview_min_interval_ms=0, shutdown_grace_seconds=2.0, cors_origins=("*",))
    app = create_app(settings, FakeEngine(load_gate=gate, step_seconds=0.01))
    uv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=uv.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not uv.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", gate
    finally:
        gate.set()
        uv.should_exit = True
        thread.join(30)


async def test_eventsource_sees_only_the_typed_events_it_listens_to(
    server: tuple[str, threading.Event], tmp_path: Path
) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    playwright_api = pytest.importorskip("playwright.async_api")
    url, gate = server
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        body = {"prompt": "x", "width": 64, "height": 64, "steps": 6, "preview": {"every": 2}}
        done = (await client.post("/v1/jobs", json=body)).json()["job_id"]
        cancelled = (await client.post("/v1/jobs", json=body)).json()["job_id"]
        assert (await client.delete(f"/v1/jobs/{cancelled}")).json()["status"] == "cancelled"
        page_path = tmp_path / "watch.html"
        page_path.write_text(PAGE.replace("BASE", url).replace("DONE_ID", done).replace("CANCELLED_ID", cancelled))
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page()
                await page.goto(page_path.as_uri())
                async with asyncio.timeout(30):
                    while (await client.get(f"/v1/jobs/{done}")).json()["watchers"] < 2:
                        await asyncio.sleep(0.05)
                gate.set()  # the model "loads": the watched job runs
                await page.wait_for_function(
                    "seen.done.closed && seen.cancelled.closed && seen.done.end.length && seen.cancelled.end.length",
                    timeout=60_000,
                )
                seen: dict[str, Any] = await page.evaluate("seen")
            finally:
                await browser.close()
    for outcome, last, marker in (("done", "complete", "[DONE]"), ("cancelled", "error", "[CANCELLED]")):
        watched = seen[outcome]
        assert watched["message"] == [], watched  # onmessage never fires
        assert watched["typed"][-1] == last and "end" not in watched["typed"], watched
        (data, last_event_id), = watched["end"]
        assert data == marker and int(last_event_id) >= len(watched["typed"])
    assert "progress" in seen["done"]["typed"] and "started" not in seen["cancelled"]["typed"]

"""API keys over a real server: Chromium's EventSource and <img> follow the signed URLs they were
given (they cannot send an Authorization header); without a key the same routes answer 401."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest

from .chromium import CHROMIUM, CHROMIUM_ARGS
from .server import LiveServer, free_port

pytestmark = [pytest.mark.live, pytest.mark.browser, pytest.mark.slow]

KEY = "live-test-key-0123456789"
JOB = {"prompt": "a red cube", "width": 64, "height": 64, "steps": 4, "scheduler": "euler"}
PAGE = """<!DOCTYPE html><html><body><div id="events"></div><img id="final">
<script>
  const es = new EventSource(SSE_URL);
  es.addEventListener('complete', () => {
    document.getElementById('events').textContent += 'complete;';
    es.close();
    document.getElementById('final').src = IMAGE_URL;
  });
  es.onerror = () => { document.getElementById('events').textContent += 'error;'; };
</script></body></html>"""


async def test_signed_urls_work_in_chromium(demo_cache_dir: Path, tmp_path: Path) -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    playwright_api = pytest.importorskip("playwright.async_api")
    server = LiveServer(
        demo_cache_dir, free_port(), "--api-key", KEY, "--cors-origins", "*", log_path=tmp_path / "log"
    )
    try:
        await asyncio.to_thread(server.wait_ready)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            assert (await client.post("/v1/jobs", json=JOB)).status_code == 401
            answer = await client.post("/v1/jobs", json=JOB, headers={"Authorization": f"Bearer {KEY}"})
            assert answer.status_code == 202
            job_id, sse_url = answer.json()["job_id"], answer.json()["sse_url"]
            assert (await client.get(f"/v1/jobs/{job_id}/stream")).status_code == 401  # unsigned
            image_url = sse_url.replace("/stream?", "/image?")
            html = PAGE.replace("SSE_URL", json.dumps(server.url + sse_url))
            html = html.replace("IMAGE_URL", json.dumps(server.url + image_url))
            page_path = tmp_path / "auth.html"
            page_path.write_text(html)
            async with playwright_api.async_playwright() as p:
                browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                try:
                    page = await browser.new_page()
                    await page.goto(page_path.as_uri())
                    await page.wait_for_function(
                        "document.getElementById('final').naturalWidth > 0", timeout=120_000
                    )
                    events = await page.text_content("#events")
                finally:
                    await browser.close()
            assert events is not None and "complete;" in events
            # The server log never shows the key.
            assert KEY not in server.log()
    finally:
        server.stop()

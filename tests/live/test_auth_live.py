"""API keys over a real server: Chromium's EventSource and <img> follow the signed URLs they were
given (they cannot send an Authorization header); without a key the same routes answer 401."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import httpx
import pytest

from sdworker.client import Client
from sdworker.client.errors import Unauthorized

from .chromium import CHROMIUM, CHROMIUM_ARGS
from .server import LiveServer, free_port

pytestmark = [pytest.mark.live, pytest.mark.browser, pytest.mark.slow]

KEY = "live-test-key-0123456789"
FILE_KEY = "file-key-0123456789abcd"
ROTATED_KEY = "rotated-key-0123456789ab"
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
    keys_file = tmp_path / "keys"
    keys_file.write_text(FILE_KEY + "\n")
    server = LiveServer(
        demo_cache_dir, free_port(), "--api-key", KEY, "--api-keys-file", str(keys_file), "--cors-origins", "*",
        log_path=tmp_path / "log",
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
            # The reference Python client sends its key on every request, the stream included.
            with Client(server.url, api_key=KEY) as sdk:
                assert len(sdk.generate(**JOB).pngs) == 1
            with Client(server.url) as sdk, pytest.raises(Unauthorized):
                sdk.submit(**JOB)
            # The keys file is re-read on SIGHUP: a rotated key works, the old one no longer.
            info = "/v1/info"
            assert (await client.get(info, headers={"Authorization": f"Bearer {FILE_KEY}"})).status_code == 200
            keys_file.write_text(ROTATED_KEY + "\n")
            server.process.send_signal(signal.SIGHUP)
            async with asyncio.timeout(30):
                while (await client.get(info, headers={"Authorization": f"Bearer {ROTATED_KEY}"})).status_code != 200:
                    await asyncio.sleep(0.1)
            assert (await client.get(info, headers={"Authorization": f"Bearer {FILE_KEY}"})).status_code == 401
            assert (await client.get(info, headers={"Authorization": f"Bearer {KEY}"})).status_code == 200
            # The server log never shows a key.
            for key in (KEY, FILE_KEY, ROTATED_KEY):
                assert key not in server.log()
    finally:
        server.stop()

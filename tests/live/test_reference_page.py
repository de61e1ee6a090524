"""The reference design's own test.html (unmodified but for the job id) against this service in
headless Chromium: it must show previews and the final image. It hard-codes
http://localhost:7833, so this test runs its own server on 7833 (skipped if the port is taken).

Our default preview format is JPEG while the page hard-codes ``data:image/png;base64,``; Chromium
sniffs the real bytes, which this test verifies (the preview's src carries JPEG bytes, ``/9j/``)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from .chromium import CHROMIUM, CHROMIUM_ARGS
from .server import LiveServer, port_is_free

pytestmark = [pytest.mark.live, pytest.mark.browser, pytest.mark.slow]

PAGE = Path(__file__).with_name("reference_test.html")
FINAL_SIZE = "(() => { const img = document.getElementById('final'); return [img.naturalWidth, img.naturalHeight]; })()"
JOB = {"prompt": "a red cube", "width": 64, "height": 64, "scheduler": "euler"}


async def test_reference_test_html_shows_previews_and_the_final_image(demo_cache_dir: Path, tmp_path: Path) -> None:
    if not port_is_free(7833):
        pytest.skip("port 7833 (hard-coded in the reference test.html) is in use")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM}")
    playwright_api = pytest.importorskip("playwright.async_api")
    # The page is a file:// page (Origin: null) calling http://localhost:7833: CORS must be on for it.
    server = LiveServer(
        demo_cache_dir, 7833, "--preview-min-interval-ms", "0", "--cors-origins", "*", log_path=tmp_path / "log"
    )
    try:
        await asyncio.to_thread(server.wait_ready)
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            # Holds the queue until the page's EventSource is connected (150 steps at 256 px: many seconds).
            long_job = {**JOB, "steps": 150, "width": 256, "height": 256, "preview": {"every": 0}}
            blocker = (await client.post("/v1/jobs", json=long_job)).json()
            job_id = (await client.post("/v1/jobs", json={**JOB, "steps": 8})).json()["job_id"]  # default previews
            html = PAGE.read_text().replace("YOUR_JOB_ID_HERE", job_id)
            assert html.count(job_id) == 1
            page_path = tmp_path / "test.html"
            page_path.write_text(html)
            async with playwright_api.async_playwright() as p:
                browser = await p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                try:
                    page = await browser.new_page()
                    await page.goto(page_path.as_uri())
                    async with asyncio.timeout(30):
                        while (await client.get(f"/v1/jobs/{job_id}")).json()["watchers"] < 1:
                            await asyncio.sleep(0.05)
                    await client.delete(f"/v1/jobs/{blocker['job_id']}")  # now the watched job runs
                    await page.wait_for_function("document.getElementById('preview').naturalWidth > 0", timeout=60_000)
                    await page.wait_for_function("document.getElementById('final').naturalWidth > 0", timeout=60_000)
                    preview_src = await page.get_attribute("#preview", "src")
                    final = await page.evaluate(FINAL_SIZE)
                    progress = await page.text_content("#progress")
                finally:
                    await browser.close()
        assert preview_src is not None and preview_src.startswith("data:image/png;base64,/9j/")  # JPEG bytes
        assert final == [64, 64]
        assert progress is not None and progress.endswith("%") and progress != "0%"
    finally:
        server.stop()

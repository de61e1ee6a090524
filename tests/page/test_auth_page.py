"""The page against a server with an API key: it asks once, keeps the key for the tab, and its
EventSource and result images follow the signed URLs (they cannot send the key)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from live.server import LiveServer, free_port

from .conftest import PageDriver

pytestmark = [pytest.mark.live, pytest.mark.browser, pytest.mark.slow]

KEY = "page-test-key-0123456789"


@pytest.fixture(scope="module")
def keyed_server(demo_cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    live = LiveServer(
        demo_cache_dir, free_port(), "--api-key", KEY, "--log-level", "warning",
        log_path=tmp_path_factory.mktemp("page-auth") / "server.log",
    )
    try:
        live.wait_ready()
        yield live.url
    finally:
        live.stop(timeout=20)


def test_the_page_asks_for_the_key_once_and_follows_signed_urls(
    browser: Any, keyed_server: str, shots: Path
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.set_default_timeout(30_000)
    asked: list[str] = []

    def answer(dialog: Any) -> None:
        asked.append(dialog.message)
        dialog.accept(KEY)

    page.on("dialog", answer)
    ui = PageDriver(page, keyed_server, shots)
    try:
        ui.open()
        ui.fill(prompt="a locked door", width=64, height=64, steps=4)
        page.click("#generate")
        job_id = ui.job_id()
        ui.wait_status("^Done", timeout_ms=60_000)
        assert any(not i["preview"] for i in ui.images()), "no final image was shown"
        src = page.get_attribute("#result-image", "src") or ""
        assert src.startswith("data:") or "token=" in src
        # A reload in the same tab reattaches to the job's stream without asking again.
        page.reload()
        page.wait_for_function("document.getElementById('server-status').textContent.startsWith('Ready')")
        ui.wait_status("^Done", timeout_ms=60_000)
        assert ui.job_id() == job_id
        assert len(asked) == 1
        assert not ui.page_errors, ui.page_errors
    finally:
        context.close()

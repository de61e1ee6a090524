"""Several jobs queued from the page: positions, a full queue (429) in plain words, cancelling from the list."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

pytestmark = [pytest.mark.live, pytest.mark.browser, pytest.mark.slow]


def test_jobs_queue_up_and_a_full_queue_is_explained(ui: Any, server: str) -> None:
    max_queue = httpx.get(f"{server}/v1/info", timeout=5).json()["limits"]["max_queue"]
    assert max_queue <= 4, "the page server fixture keeps the queue short"
    ui.open()
    ui.fill(prompt="first, long", width=64, height=64, steps=1500)
    ui.previews(every=10, interval_ms=250)
    ui.page.click("#generate")
    first = ui.job_id()
    ui.wait_step(1)  # running, so the queue holds only what follows

    for i in range(max_queue):
        ui.fill(prompt=f"waiting {i + 1}", steps=3)
        ui.page.click("#generate")
        ui.page.wait_for_function("n => document.querySelectorAll('#queue-list li').length === n", arg=i + 1)
    assert ui.job_id() == first, "the page keeps following the running job"
    ui.page.wait_for_function("document.getElementById('queue-list').textContent.includes('position 2')")
    rows = ui.page.locator("#queue-list li").all_inner_texts()
    assert "waiting 1" in rows[0] and "waiting 2" in rows[1], rows

    # One more than the queue holds: the service answers 429 and the page says so, with the wait.
    ui.fill(prompt="one too many")
    with ui.page.expect_response(lambda r: r.url.endswith("/v1/jobs") and r.request.method == "POST") as answer:
        ui.page.click("#generate")
    assert answer.value.status == 429
    seconds = int(answer.value.headers["retry-after"])
    ui.page.wait_for_selector("#form-error:not([hidden])")
    text = ui.page.inner_text("#form-error")
    assert "queue is full" in text.lower(), text
    assert re.search(rf"\bRetry in ({seconds}|{seconds - 1}) seconds?\b", text), text
    ui.page.evaluate("window.scrollTo(0, 0)")
    ui.shot("queue-full-1280", full_page=True)

    # Watch the last waiting job: the page shows its place in the queue.
    ui.page.locator("#queue-list li").nth(1).get_by_role("button", name="Watch").click()
    watched = ui.job_id()
    assert watched != first
    ui.wait_status("^Queued: position 2 in the queue")
    assert ui.page.locator("#queue-list li").first.inner_text().startswith("first, long")
    ui.page.evaluate("window.scrollTo(0, 0)")
    ui.shot("queued-position-1280")

    # Cancel it while it waits; then the page goes back to the running job, and cancelling that one
    # lets the remaining job run to the end.
    ui.page.click("#cancel")
    ui.wait_status("^Cancelled")
    ui.page.wait_for_function("f => location.hash.endsWith(f)", arg=first, timeout=15_000)
    ui.wait_status("^Generating")
    ui.page.click("#cancel")
    ui.wait_status("^Cancelled")
    ui.page.wait_for_function("f => !location.hash.endsWith(f)", arg=first, timeout=15_000)
    ui.wait_status("^Done", timeout_ms=60_000)
    ui.page.evaluate("window.scrollTo(0, 0)")
    ui.shot("queue-done-1280")
    by_id = {j["job_id"]: j["status"] for j in httpx.get(f"{server}/v1/jobs", timeout=5).json()["jobs"]}
    assert by_id[first] == "cancelled" and by_id[watched] == "cancelled"
    assert by_id[ui.job_id()] == "completed"
    # The strip also holds the server's history (earlier tests' images): this job is in it once, and
    # neither cancelled job is.
    assert ui.page.locator(f"#strip img[src*='{ui.job_id()}']").count() == 1
    assert ui.page.locator(f"#strip img[src*='{first}'], #strip img[src*='{watched}']").count() == 0

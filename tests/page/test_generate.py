"""The page in a real browser against a live ``sdworker serve --model demo``: generate, cancel, reload."""

from __future__ import annotations

import base64
import io
import re
from typing import Any

import httpx
import pytest
from PIL import Image

pytestmark = [pytest.mark.live, pytest.mark.browser, pytest.mark.slow]


def _png_size(data_url: str) -> tuple[int, int]:
    assert data_url.startswith("data:image/png;base64,"), data_url[:40]
    with Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))) as img:
        return img.size


def test_txt2img_shows_changing_previews_then_the_final_image(ui: Any, server: str) -> None:
    ui.open()
    ui.fill(prompt="a red lighthouse", width=64, height=64, steps=6)
    ui.page.click("#seed-dice")
    seed = ui.page.input_value("#seed")
    assert re.fullmatch(r"\d+", seed)
    ui.previews(every=1, interval_ms=0, fmt="jpeg")
    ui.page.click("#generate")
    job_id = ui.job_id()
    ui.wait_step(3)
    ui.page.evaluate("window.scrollTo(0, 0)")
    ui.shot("txt2img-preview-1280")
    ui.wait_status("^Done", timeout_ms=60_000)
    ui.shot("txt2img-final-1280")

    seen = ui.images()
    finals = [i for i in seen if not i["preview"]]
    assert finals, "no final image was shown"
    final_at = seen.index(finals[0])
    previews = [i["src"] for i in seen[:final_at]]
    assert all(src.startswith("data:image/jpeg;base64,") for src in previews), [s[:30] for s in previews]
    assert len(set(previews)) >= 2, f"{len(set(previews))} distinct preview images before the final one"
    assert _png_size(finals[0]["src"]) == (64, 64)
    assert finals[-1]["src"] == ui.page.get_attribute("#result-image", "src")

    # The seed used is shown, the download is the service's PNG, and "last seed" puts it back.
    assert ui.page.inner_text("#seed-used") == seed
    href = ui.page.get_attribute("#download", "href")
    assert href == f"/v1/jobs/{job_id}/image"
    png = httpx.get(server + href, timeout=10)
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(io.BytesIO(png.content)) as downloaded:
        parameters = downloaded.info.get("parameters", "")
    assert "a red lighthouse" in parameters and f"Seed: {seed}" in parameters, parameters
    ui.fill(seed="")
    ui.page.click("#seed-reuse")
    assert ui.page.input_value("#seed") == seed
    assert "it/s" in ui.page.inner_text("#progress-text") or "s/it" in ui.page.inner_text("#progress-text")
    # The result strip holds it.
    assert ui.page.locator("#strip img").count() == 1


def test_cancel_ends_a_long_job_and_says_so(ui: Any, server: str) -> None:
    ui.open()
    ui.fill(prompt="a long job", width=64, height=64, steps=1500)
    ui.previews(every=2, interval_ms=0)
    ui.page.click("#generate")
    job_id = ui.job_id()
    ui.wait_step(4)
    ui.page.wait_for_selector("#result-image.is-preview")
    assert ui.page.is_enabled("#cancel")
    ui.page.click("#cancel")
    text = ui.wait_status("^Cancelled", timeout_ms=15_000)
    assert "Cancelled at step" in text
    ui.page.evaluate("window.scrollTo(0, 0)")
    ui.shot("cancelled-1280")
    status = httpx.get(f"{server}/v1/jobs/{job_id}", timeout=5).json()
    assert status["status"] == "cancelled"
    assert status["step"] < 1500
    assert ui.page.is_disabled("#cancel")


def test_reload_mid_job_reattaches_and_ends_on_the_final_image(ui: Any, server: str) -> None:
    ui.open()
    ui.fill(prompt="survives a reload", width=64, height=64, steps=14)
    ui.previews(every=2, interval_ms=0)
    ui.page.click("#generate")
    job_id = ui.job_id()
    ui.wait_step(2)
    assert ui.page.url.endswith(f"#job={job_id}")
    assert httpx.get(f"{server}/v1/jobs/{job_id}", timeout=5).json()["status"] == "running", "reload mid-job"

    ui.page.reload()
    assert ui.page.url.endswith(f"#job={job_id}")
    assert ui.page.input_value("#prompt") == "survives a reload", "the form is kept across the reload"
    ui.page.wait_for_function("Number(document.getElementById('progress').value) >= 1")
    ui.wait_status("^Done", timeout_ms=90_000)
    ui.shot("reloaded-final-1280")
    after_reload = ui.images()  # the recorder starts afresh with the reloaded document
    assert after_reload and not after_reload[-1]["preview"]
    assert _png_size(after_reload[-1]["src"]) == (64, 64)
    assert httpx.get(f"{server}/v1/jobs/{job_id}", timeout=5).json()["status"] == "completed"
    assert ui.page.inner_text("#seed-used").isdigit()


def test_a_bad_value_shows_the_services_message(ui: Any, server: str) -> None:
    body = {"operation": "image_generation", "prompt": "x", "width": 100, "height": 64, "steps": 2}
    expected = httpx.post(f"{server}/v1/jobs", json=body, timeout=10)
    assert 400 <= expected.status_code < 500
    message = expected.json()["message"]

    ui.open()
    ui.fill(prompt="x", width=100, height=64, steps=2)
    ui.page.click("#generate")
    ui.page.wait_for_selector("#width-error:not([hidden])")
    beside_width = ui.page.inner_text("#width-error")
    assert beside_width and message.endswith(beside_width), (beside_width, message)
    assert message in ui.page.inner_text("#form-error")
    assert ui.page.get_attribute("#width", "aria-invalid") == "true"
    ui.shot("bad-width-1280", full_page=True)

    # Steps above the server's --max-steps: the page shows the limit next to Steps.
    max_steps = httpx.get(f"{server}/v1/info", timeout=5).json()["limits"]["max_steps"]
    ui.fill(width=64, steps=max_steps + 1)
    ui.page.click("#generate")
    ui.page.wait_for_selector("#steps-error:not([hidden])")
    beside_steps = ui.page.inner_text("#steps-error")
    assert str(max_steps + 1) in beside_steps, beside_steps
    assert str(max_steps) in beside_steps.replace(str(max_steps + 1), ""), "the allowed range is named"
    assert ui.page.locator("#width-error").is_hidden()
    assert not ui.page.evaluate("location.hash"), "a refused job must not be followed"


def test_a_lost_connection_says_reconnecting_and_recovers(ui: Any, proxy: Any) -> None:
    ui.base = f"http://127.0.0.1:{proxy.port}"
    ui.open()
    # A job far longer than the test, so the cut always lands mid-job whatever the machine's speed.
    ui.fill(prompt="through a bad network", width=64, height=64, steps=1500)
    ui.previews(every=2, interval_ms=0)
    ui.page.click("#generate")
    ui.wait_step(4)
    ui.page.wait_for_selector("#result-image.is-preview")

    proxy.cut(refuse_seconds=2.5)
    text = ui.wait_status("reconnecting", timeout_ms=10_000)
    assert "lost" in text.lower()
    cut_at = int(ui.page.evaluate("document.getElementById('progress').value"))
    ui.page.evaluate("window.scrollTo(0, 0)")
    ui.shot("reconnecting-1280")

    # EventSource comes back by itself and the page carries on from where it was.
    ui.wait_status("^Generating", timeout_ms=20_000)
    ui.wait_step(cut_at + 2)
    streams = [r for r in proxy.requests if r.startswith("GET ") and "/stream" in r.split("\r\n", 1)[0]]
    assert len(streams) >= 2, streams
    resumed = [re.search(r"(?im)^last-event-id: *(\d+)", r) for r in streams[1:]]
    assert any(m and int(m.group(1)) > 0 for m in resumed), "the browser resumed after its last event"
    ui.page.click("#cancel")
    ui.wait_status("^Cancelled")


def test_a_new_page_shows_the_history_the_server_kept_newest_first(ui: Any, server: str) -> None:
    """Jobs made elsewhere (another tab, yesterday's run before a restart) are in the strip of a page
    that never saw them: the page reads the server's list."""
    body = {"prompt": "history", "width": 64, "height": 64, "steps": 2, "preview": {"every": 0}}
    ids = []
    for seed in (1, 2):
        job_id = httpx.post(f"{server}/v1/jobs", json={**body, "seed": seed}, timeout=10).json()["job_id"]
        for _ in range(600):
            if httpx.get(f"{server}/v1/jobs/{job_id}", timeout=10).json()["status"] == "completed":
                break
            ui.page.wait_for_timeout(100)
        ids.append(job_id)
    ui.open()  # a fresh browser context: nothing of these jobs in its storage
    ui.page.wait_for_function(
        "ids => ids.every(id => [...document.querySelectorAll('#strip img')].some(i => i.src.includes(id)))",
        arg=ids, timeout=30_000,
    )
    sources = ui.page.eval_on_selector_all("#strip img", "els => els.map(e => e.getAttribute('src'))")
    where = [next(i for i, src in enumerate(sources) if job_id in src) for job_id in ids]
    assert where[1] < where[0], sources  # newest first

"""The page is usable at 400 px wide and every form control has a label."""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = [pytest.mark.live, pytest.mark.browser]

UNLABELLED = """
() => [...document.querySelectorAll('input, select, textarea')]
  .filter(el => el.type !== 'hidden')
  .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label'))
  .map(el => el.id || el.name || el.outerHTML.slice(0, 60))
"""


@pytest.mark.parametrize("width", [400, 1280])
def test_every_control_is_labelled_and_nothing_overflows(ui: Any, width: int) -> None:
    ui.page.set_viewport_size({"width": width, "height": 800})
    ui.open()
    for mode in ("txt2img", "img2img", "inpaint"):
        ui.mode(mode)
        assert ui.page.evaluate(UNLABELLED) == [], f"controls without a label in {mode} mode"
    ui.mode("txt2img")
    ui.page.click("#preview-settings summary")
    assert ui.page.evaluate(UNLABELLED) == []
    scroll_width = ui.page.evaluate("document.documentElement.scrollWidth")
    assert scroll_width <= width, f"page is {scroll_width} px wide in a {width} px window"
    for selector in ("#prompt", "#generate", "#cancel", "#seed-dice", "#scheduler"):
        box = ui.page.locator(selector).bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= width, selector
    ui.shot(f"form-{width}", full_page=True)


def test_narrow_window_runs_a_job(ui: Any) -> None:
    ui.page.set_viewport_size({"width": 400, "height": 800})
    ui.open()
    ui.fill(prompt="small screen", width=64, height=64, steps=4)
    ui.page.click("#generate")
    ui.wait_status("^Done", timeout_ms=60_000)
    # The page brought the result into view when the job was submitted.
    status_box = ui.page.locator("#job-status").bounding_box()
    assert status_box and 0 <= status_box["y"] < 800
    box = ui.page.locator("#result-image").bounding_box()
    assert box and box["x"] >= 0 and box["x"] + box["width"] <= 400
    ui.shot("final-400")
    ui.shot("final-400-full", full_page=True)

"""The page's starting values and its icon (issue #20), in a real browser against ``sdworker serve --model demo``.

The page starts from the server's model's defaults (the demo's 64 px, not 512) and, on a CPU, at no more
than 8 steps; picking a model fills that model's defaults except where the person edited a field; and
the page names an inline icon, so the browser never asks for the /favicon.ico the server does not have.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from .conftest import CuttableProxy, PageDriver

pytestmark = [pytest.mark.live, pytest.mark.browser, pytest.mark.slow]

FIELDS = ("width", "height", "steps", "guidance_scale")
CPU_START_STEPS = 8  # the page's cap on its starting steps on a CPU device (form.js)


def values(ui: PageDriver) -> list[str]:
    return [ui.page.input_value(f"#{field}") for field in FIELDS]


def test_the_page_starts_from_the_default_models_size_and_few_steps_on_a_cpu(ui: Any, server: str) -> None:
    models = httpx.get(f"{server}/v1/models", timeout=10).json()["data"]
    default = next(m for m in models if m["default"])
    assert httpx.get(f"{server}/v1/info", timeout=10).json()["model"]["device"] == "cpu"
    assert default["native_size"] == 64 and default["defaults"]["steps"] > CPU_START_STEPS, default
    ui.open()
    d = default["defaults"]
    assert values(ui) == [str(d["width"]), str(d["height"]), str(CPU_START_STEPS), str(d["guidance_scale"])]
    # A newcomer who only types a prompt gets the model's native size at the few steps.
    ui.fill(prompt="a first try")
    ui.page.click("#generate")
    job_id = ui.job_id()
    ui.wait_status("^Done", timeout_ms=120_000)
    params = httpx.get(f"{server}/v1/jobs/{job_id}", timeout=10).json()["parameters"]
    assert (params["width"], params["height"], params["steps"]) == (64, 64, CPU_START_STEPS), params


def test_picking_a_model_follows_its_defaults_but_keeps_what_the_person_edited(ui: Any) -> None:
    ui.open()
    ui.fill(steps=3)
    ui.page.select_option("#model", "demo-flux1")
    assert values(ui) == ["1024", "1024", "3", "3.5"], "steps were edited; the rest follow FLUX.1's defaults"
    # Across a reload the page still tells what it filled in from what the person typed.
    ui.page.reload()
    ui.page.wait_for_function("document.getElementById('server-status').textContent.startsWith('Ready')")
    assert ui.page.input_value("#model") == "demo-flux1"
    assert values(ui) == ["1024", "1024", "3", "3.5"]
    ui.page.select_option("#model", "demo-sdxl")
    assert values(ui) == ["64", "64", "3", "7.5"]


def test_the_page_has_an_icon_so_the_browser_asks_for_no_favicon(ui: Any, server: str, proxy: CuttableProxy) -> None:
    assert httpx.get(f"{server}/favicon.ico", timeout=5).status_code == 404, "the server has no favicon"
    # Through the proxy: the browser's own icon request is none of the page's, so only the connection shows it.
    ui.base = f"http://127.0.0.1:{proxy.port}"
    ui.open()
    ui.page.wait_for_timeout(1500)  # the browser asks for an icon after the load event
    asked = [head.split("\r\n", 1)[0] for head in proxy.requests]
    assert any(line.startswith("GET /v1/info ") for line in asked), asked
    assert not [line for line in asked if line.startswith("GET /favicon.ico")], asked
    icon = ui.page.eval_on_selector_all('link[rel="icon"]', "els => els.map(e => e.getAttribute('href'))")
    assert len(icon) == 1 and icon[0].startswith("data:image/svg+xml,"), icon

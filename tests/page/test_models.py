"""The page's model picker and LoRA rows, in a real browser against ``sdworker serve --model demo``."""

from __future__ import annotations

import io
from typing import Any

import httpx
import pytest
from PIL import Image

pytestmark = [pytest.mark.live, pytest.mark.browser, pytest.mark.slow]


def test_pick_the_sdxl_demo_model_and_a_lora_and_get_an_image(ui: Any, server: str) -> None:
    ui.open()
    options = ui.page.eval_on_selector_all("#model option", "els => els.map(e => e.value)")
    assert {"demo-sd15", "demo-sdxl"} <= set(options), options
    ui.page.select_option("#model", "demo-sdxl")
    ui.page.click("#lora-add")
    ui.page.select_option("#lora-rows .lora-row:last-child .lora-name", "demo-xl-peft")
    ui.page.fill("#lora-rows .lora-row:last-child .lora-weight", "0.8")
    ui.fill(prompt="a blue bird", width=64, height=64, steps=2, seed=5)
    ui.page.click("#generate")
    job_id = ui.job_id()
    ui.wait_status("^Done", timeout_ms=120_000)
    ui.shot("models-sdxl-lora-1280")
    job = httpx.get(f"{server}/v1/jobs/{job_id}", timeout=10).json()
    assert job["parameters"]["model"] == "demo-sdxl"
    assert job["parameters"]["loras"] == [{"path": "demo-xl-peft", "strength": 0.8}]
    png = httpx.get(f"{server}/v1/jobs/{job_id}/image", timeout=10)
    with Image.open(io.BytesIO(png.content)) as image:
        parameters = image.info.get("parameters", "")
        assert image.size == (64, 64)
    assert "Model: demo-sdxl" in parameters and "demo-xl-peft" in parameters, parameters
    assert not ui.page_errors, ui.page_errors


def test_picking_flux_shows_its_defaults_and_generates(ui: Any, server: str) -> None:
    """The page fills FLUX.1 dev's own defaults when it is picked (28 steps, guidance 3.5, 1024 px, a size
    step of 16) and generates with it."""
    ui.open()
    ui.page.select_option("#model", "demo-flux1")
    values = [ui.page.input_value(f"#{field}") for field in ("steps", "guidance_scale", "width", "height")]
    assert values == ["28", "3.5", "1024", "1024"], values
    assert ui.page.get_attribute("#width", "step") == "16"
    ui.fill(prompt="a red fox", width=64, height=64, steps=3, seed=2)
    ui.page.click("#generate")
    job_id = ui.job_id()
    ui.wait_status("^Done", timeout_ms=120_000)
    job = httpx.get(f"{server}/v1/jobs/{job_id}", timeout=10).json()
    assert job["parameters"]["model"] == "demo-flux1" and job["parameters"]["guidance_scale"] == 3.5
    assert not ui.page_errors, ui.page_errors

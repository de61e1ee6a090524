"""Jobs guided by images through the page, in a real browser against a live ``sdworker serve --model
demo``: a ControlNet unit (its control map previewed before the job, the unit in the job sent, the
image not the one made without it) and the hires fix (the second pass's size and fields)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import cv2
import httpx
import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.live, pytest.mark.browser, pytest.mark.slow]

JOB = {"prompt": "a stone tower", "width": 64, "height": 64, "steps": 3}
SEED = "4242"


def _picture(path: Path) -> Path:
    """A photo-like picture with edges for canny to find (a gradient and two squares)."""
    img = Image.new("RGB", (64, 64))
    img.putdata([(x * 4, y * 4, 90) for y in range(64) for x in range(64)])
    img.paste((250, 250, 40), (12, 12, 36, 36))
    img.paste((10, 10, 10), (40, 30, 60, 56))
    img.save(path)
    return path


def _pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def _capture_job_posts(page: Any) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = []
    page.on("request", lambda r: bodies.append(json.loads(r.post_data))
            if r.method == "POST" and r.url.endswith("/v1/jobs") else None)
    return bodies


def _native(server: str, **body: Any) -> np.ndarray:
    """The image of a job submitted over HTTP (waits with Prefer: wait)."""
    with httpx.Client(base_url=server, timeout=120) as http:
        response = http.post("/v1/jobs", json=body, headers={"Prefer": "wait=60"})
        assert response.status_code == 201, response.text
        return _pixels(http.get(f"/v1/jobs/{response.json()['job_id']}/image").content)


def _fill_job(ui: Any) -> None:
    ui.open()
    ui.fill(seed=SEED, **JOB)


def test_controlnet_unit_previews_its_map_and_reaches_the_job(ui: Any, server: str, tmp_path: Path) -> None:
    picture = _picture(tmp_path / "tower.png")
    bodies = _capture_job_posts(ui.page)
    _fill_job(ui)
    ui.page.click("#controlnet-section summary")
    ui.page.click("#controlnet-add")
    unit = "#controlnet-units .cn-unit"
    ui.page.select_option(f"{unit} .cn-model", "demo-controlnet")
    ui.page.select_option(f"{unit} .cn-preprocessor", "canny")
    ui.page.set_input_files(f"{unit} .cn-file", str(picture))
    ui.page.wait_for_selector(f"{unit} .cn-map[src^='data:image/png']", state="visible")
    ui.fill(**{"controlnet-units .cn-weight": 0.8})
    ui.shot("controlnet-unit-1280", full_page=True)

    # The preview is canny's map of the picture (OpenCV's Canny at the default thresholds 100/200).
    shown = ui.page.get_attribute(f"{unit} .cn-map", "src")
    expected = cv2.Canny(np.asarray(Image.open(picture).convert("RGB")), 100, 200)
    preview = _pixels(base64.b64decode(shown.split(",", 1)[1]))
    assert expected.any()
    np.testing.assert_array_equal(preview[..., 0], expected)

    ui.page.click("#generate")
    ui.wait_status("^Done", timeout_ms=90_000)
    (body,) = bodies
    (sent,) = body["controlnet"]
    assert base64.b64decode(sent.pop("image")) == picture.read_bytes()
    assert sent == {"model": "demo-controlnet", "preprocessor": "canny", "weight": 0.8, "start": 0, "end": 1}
    job = httpx.get(f"{server}/v1/jobs/{ui.job_id()}", timeout=10).json()
    assert job["parameters"]["controlnet"][0]["model"] == "demo-controlnet"

    final = ui.page.get_attribute("#result-image", "src")
    made = _pixels(base64.b64decode(final.split(",", 1)[1]))
    unit_body = {**sent, "image": base64.b64encode(picture.read_bytes()).decode()}
    native = _native(server, **JOB, seed=int(SEED), controlnet=[unit_body])
    np.testing.assert_array_equal(made, native)  # the page's job is the native job with that unit
    without = _native(server, **JOB, seed=int(SEED))
    assert np.abs(made.astype(int) - without.astype(int)).max() > 0  # the unit changes the image


def test_a_bad_control_image_is_named_under_the_unit(ui: Any, tmp_path: Path) -> None:
    not_image = tmp_path / "notes.png"
    not_image.write_bytes(b"not an image at all")
    _fill_job(ui)
    ui.page.click("#controlnet-section summary")
    ui.page.click("#controlnet-add")
    ui.page.set_input_files("#controlnet-units .cn-unit .cn-file", str(not_image))
    ui.page.wait_for_function(
        "document.querySelector('#controlnet-units .cn-note').textContent.includes('image')"
    )
    assert ui.page.is_hidden("#controlnet-units .cn-map")


def test_hires_fix_from_the_page_runs_the_second_pass(ui: Any, server: str) -> None:
    bodies = _capture_job_posts(ui.page)
    _fill_job(ui)
    ui.page.click("#hires-section summary")
    assert ui.page.is_hidden("#hires-fields")
    ui.page.check("#hires-enable")
    options = ui.page.eval_on_selector_all("#hires-upscaler option", "os => os.map(o => o.value)")
    assert "Latent" in options and "demo-esrgan" in options, options  # built-ins and the upscaler models
    ui.fill(**{"hires-scale": 2, "hires-strength": 0.5, "hires-steps": 2})
    ui.page.select_option("#hires-upscaler", "Latent (nearest)")
    ui.page.click("#generate")
    ui.wait_status("^Done", timeout_ms=90_000)
    (body,) = bodies
    assert body["hires"] == {"scale": 2, "upscaler": "Latent (nearest)", "strength": 0.5, "steps": 2}
    final = ui.page.get_attribute("#result-image", "src")
    made = _pixels(base64.b64decode(final.split(",", 1)[1]))
    assert made.shape == (128, 128, 3)
    np.testing.assert_array_equal(made, _native(server, **JOB, seed=int(SEED), hires=body["hires"]))


def test_ip_adapter_reference_image_reaches_the_job(ui: Any, server: str, tmp_path: Path) -> None:
    reference = tmp_path / "style.png"
    Image.new("RGB", (48, 48), (200, 30, 30)).save(reference)
    bodies = _capture_job_posts(ui.page)
    _fill_job(ui)
    assert ui.page.is_visible("#ip-adapter-section")  # the demo worker has demo-ip-adapter
    ui.page.click("#ip-adapter-section summary")
    ui.page.select_option("#ip-adapter-model", "demo-ip-adapter")
    ui.fill(**{"ip-adapter-scale": 0.5})
    ui.page.set_input_files("#ip-adapter-file", str(reference))
    ui.page.wait_for_selector("#ip-adapter-preview[src^='data:image']", state="visible")
    ui.page.click("#generate")
    ui.wait_status("^Done", timeout_ms=90_000)
    (body,) = bodies
    adapter = body["ip_adapter"]
    assert adapter["model"] == "demo-ip-adapter" and adapter["scale"] == 0.5
    assert [base64.b64decode(i) for i in adapter["images"]] == [reference.read_bytes()]
    final = ui.page.get_attribute("#result-image", "src")
    made = _pixels(base64.b64decode(final.split(",", 1)[1]))
    without = _native(server, **JOB, seed=int(SEED))
    assert np.abs(made.astype(int) - without.astype(int)).max() > 0  # the reference image reaches the pixels


def test_an_edit_model_takes_the_images_to_edit(ui: Any, tmp_path: Path) -> None:
    door = tmp_path / "door.png"
    Image.new("RGB", (64, 64), (30, 140, 220)).save(door)
    bodies = _capture_job_posts(ui.page)
    _fill_job(ui)
    assert ui.page.is_hidden("#edit-section")
    ui.mode("img2img")  # an edit model takes its images in its own section, not as an input image
    assert ui.page.is_visible("#input-section")
    ui.page.select_option("#model", "demo-flux1-kontext")
    ui.page.wait_for_selector("#edit-section", state="visible")
    assert ui.page.is_hidden("#input-section")
    assert ui.page.inner_text("#edit-limit") == "1" and ui.page.is_disabled('input[name="mode"][value="img2img"]')
    ui.fill(prompt="make the door red", width=64, height=64, steps=2)
    ui.page.click("#generate")  # no image yet: refused on the page, nothing sent
    assert ui.page.is_visible("#reference_images-error") and not bodies
    ui.page.set_input_files("#edit-files", str(door))
    ui.page.wait_for_selector("#edit-previews img")
    ui.page.click("#generate")
    ui.wait_status("^Done", timeout_ms=90_000)
    (body,) = bodies
    assert body["operation"] == "image_edit" and body["model"] == "demo-flux1-kontext"
    assert [base64.b64decode(i) for i in body["reference_images"]] == [door.read_bytes()]
    ui.page.select_option("#model", "demo-sd15")
    ui.page.wait_for_selector("#edit-section", state="hidden")
    assert ui.page.is_visible("#input-section")

"""Image inputs through the page: an uploaded image for img2img, a mask painted with the mouse for inpaint."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

pytestmark = [pytest.mark.live, pytest.mark.browser, pytest.mark.slow]


def _write_png(path: Path, size: tuple[int, int]) -> Path:
    """A picture with structure (a gradient and a square) so resizing or swapping would show."""
    w, h = size
    img = Image.new("RGB", size)
    img.putdata([(x * 255 // w, y * 255 // h, 128) for y in range(h) for x in range(w)])
    img.paste((250, 250, 40), (w // 4, h // 4, w // 2, h // 2))
    img.save(path)
    return path


def _decode(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _capture_job_posts(page: Any) -> list[dict[str, Any]]:
    bodies: list[dict[str, Any]] = []

    def on_request(request: Any) -> None:
        if request.method == "POST" and request.url.endswith("/v1/jobs"):
            bodies.append(json.loads(request.post_data))

    page.on("request", on_request)
    return bodies


def test_img2img_runs_from_an_uploaded_image(ui: Any, tmp_path: Path) -> None:
    picture = _write_png(tmp_path / "input.png", (96, 64))
    bodies = _capture_job_posts(ui.page)
    ui.open()
    ui.mode("img2img")
    ui.page.set_input_files("#input-file", str(picture))
    ui.page.wait_for_selector("#input-preview[src^='data:image']")
    # The size comes from the image: the fields follow it and are locked.
    assert ui.page.input_value("#width") == "96" and ui.page.input_value("#height") == "64"
    assert ui.page.is_disabled("#width")
    ui.fill(prompt="the same scene at night", steps=6)
    ui.set_range("strength", 0.6)
    ui.page.click("#generate")
    ui.wait_status("^Done", timeout_ms=60_000)
    ui.shot("img2img-final-1280")

    (body,) = bodies
    assert body["operation"] == "image_transform"
    assert body["strength"] == pytest.approx(0.6)
    sent = _decode(body["input_image"])
    assert sent.size == (96, 64)
    assert sent.convert("RGB").tobytes() == Image.open(picture).convert("RGB").tobytes()
    final = ui.page.get_attribute("#result-image", "src")
    assert _decode(final.split(",", 1)[1]).size == (96, 64)


def test_inpaint_mask_painted_with_the_mouse_is_sent_at_the_image_size(ui: Any, tmp_path: Path) -> None:
    picture = _write_png(tmp_path / "room.png", (128, 96))
    bodies = _capture_job_posts(ui.page)
    ui.open()
    ui.mode("inpaint")
    ui.page.set_input_files("#input-file", str(picture))
    ui.page.wait_for_selector("#mask-canvas")
    ui.set_range("brush-size", 20)

    # Paint a horizontal stroke across the upper half of the picture as shown on screen.
    box = ui.page.locator("#mask-canvas").bounding_box()
    y = box["y"] + box["height"] * 0.3
    ui.page.mouse.move(box["x"] + box["width"] * 0.1, y)
    ui.page.mouse.down()
    for i in range(1, 11):
        ui.page.mouse.move(box["x"] + box["width"] * (0.1 + 0.07 * i), y)
    ui.page.mouse.up()
    ui.fill(prompt="a window in the wall", steps=4)
    ui.page.evaluate("document.getElementById('mask-editor').scrollIntoView({block: 'center'})")
    ui.shot("inpaint-mask-1280")
    ui.page.click("#generate")
    ui.wait_status("^Done", timeout_ms=60_000)
    ui.shot("inpaint-final-1280")

    (body,) = bodies
    assert body["operation"] == "image_inpaint"
    assert _decode(body["init_image"]).size == (128, 96)
    mask = _decode(body["mask_image"]).convert("L")
    assert mask.size == (128, 96), "the mask must match the image's size"
    # White along the stroke's row, black far from it.
    row = int(96 * 0.3)
    assert mask.getpixel((64, row)) == 255
    assert mask.getpixel((64, 90)) == 0
    white = sum(1 for v in mask.getdata() if v > 127)
    assert 0.05 < white / (128 * 96) < 0.5, white


def test_use_as_input_moves_the_result_into_img2img(ui: Any) -> None:
    ui.open()
    ui.fill(prompt="a seed picture", width=64, height=48, steps=3)
    ui.page.click("#generate")
    ui.wait_status("^Done", timeout_ms=60_000)
    ui.page.click("#use-as-input")
    ui.page.wait_for_selector("#input-preview[src^='data:image']")
    assert ui.page.is_checked('input[name="mode"][value="img2img"]')
    assert ui.page.input_value("#width") == "64" and ui.page.input_value("#height") == "48"


def test_an_image_dropped_on_the_box_becomes_the_input_fitted_to_multiples_of_8(ui: Any, tmp_path: Path) -> None:
    # 83x61 is not a multiple of 8: the page fits it to 80x56 and says so.
    data = base64.b64encode(_write_png(tmp_path / "dropped.png", (83, 61)).read_bytes()).decode()
    ui.open()
    ui.mode("img2img")
    # What a drag from the file manager delivers: a drop event carrying the file.
    ui.page.evaluate(
        """b64 => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
            const zone = document.getElementById("drop-zone");
            zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: dt, bubbles: true, cancelable: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: dt, bubbles: true, cancelable: true}));
        }""",
        data,
    )
    ui.page.wait_for_selector("#input-preview[src^='data:image']")
    assert ui.page.input_value("#width") == "80" and ui.page.input_value("#height") == "56"
    assert "resized from 83×61" in ui.page.inner_text("#input_image-error")
    shown = ui.page.get_attribute("#input-preview", "src")
    assert _decode(shown.split(",", 1)[1]).size == (80, 56), "the image sent is the resized one"


def test_an_erased_or_cleared_mask_is_not_sent(ui: Any, tmp_path: Path) -> None:
    picture = _write_png(tmp_path / "wall.png", (64, 64))
    bodies = _capture_job_posts(ui.page)
    ui.open()
    ui.mode("inpaint")
    ui.page.set_input_files("#input-file", str(picture))
    ui.page.wait_for_selector("#input-preview[src^='data:image']")
    ui.set_range("brush-size", 30)

    def dab() -> None:
        # Measured each time: clicking the tools may scroll the page under the mouse.
        box = ui.page.locator("#mask-canvas").bounding_box()
        cx, cy = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
        ui.page.mouse.move(cx, cy)
        ui.page.mouse.down()
        ui.page.mouse.move(cx + 2, cy + 2)
        ui.page.mouse.up()

    dab()
    ui.page.check('input[name="mask-tool"][value="eraser"]')
    ui.set_range("brush-size", 120)
    dab()  # a larger eraser over the same spot removes all the paint
    ui.fill(prompt="nothing to repaint", steps=2)
    ui.page.click("#generate")
    ui.page.wait_for_selector("#mask_image-error:not([hidden])")
    assert "empty" in ui.page.inner_text("#form-error").lower()

    ui.page.check('input[name="mask-tool"][value="brush"]')
    dab()
    ui.page.click("#mask-clear")
    ui.page.click("#generate")
    ui.page.wait_for_selector("#form-error:not([hidden])")
    assert "empty" in ui.page.inner_text("#form-error").lower()
    assert bodies == [], "an empty mask never reaches the service"

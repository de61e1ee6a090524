"""``sdworker generate --url``: the local command's flags and output, the work done by a live server."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from live.server import ROOT
from PIL import Image

from sdworker.cli import main
from sdworker.imaging.metadata import parse_parameters

from .conftest import job_status, wait_for

pytestmark = [pytest.mark.live, pytest.mark.slow]

FLAGS = ["--steps", "3", "--width", "64", "--height", "64", "--seed", "11", "--scheduler", "euler"]


def native_pngs(url: str, n: int) -> list[bytes]:
    body = {"prompt": "a red cube", "steps": 3, "width": 64, "height": 64, "seed": 11, "scheduler": "euler", "n": n}
    job_id = httpx.post(f"{url}/v1/jobs", json=body).json()["job_id"]
    wait_for(lambda: job_status(url, job_id) == "completed")
    return [httpx.get(f"{url}/v1/jobs/{job_id}/image", params={"index": i}).content for i in range(n)]


def pixels(png: bytes | Path) -> bytes:
    with Image.open(io.BytesIO(png) if isinstance(png, bytes) else png) as image:
        return image.convert("RGB").tobytes()


def test_generate_url_writes_the_native_jobs_pixels_previews_and_metadata(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    out, previews = tmp_path / "out.png", tmp_path / "previews"
    code = main(["generate", "a red cube", "--url", url, "-o", str(out), *FLAGS, "--n", "2",
                 "--preview-dir", str(previews), "--preview-every", "1", "--preview-format", "png"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    paths = [tmp_path / "out-0.png", tmp_path / "out-1.png"]
    assert captured.out.split() == [str(p) for p in paths]
    assert "3/3" in captured.err and "seed 11, 12" in captured.err  # the progress bar, then the summary
    assert [pixels(p) for p in paths] == [pixels(png) for png in native_pngs(url, 2)]
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            info = parse_parameters(image.text["parameters"])  # type: ignore[attr-defined]
        assert (info["Prompt"], info["Seed"], info["Size"], info["Steps"]) == ("a red cube", str(11 + i), "64x64", "3")
    assert {p.name for p in previews.iterdir()} <= {"step-001.png", "step-002.png", "step-003.png"}
    assert any(previews.iterdir())

    monkeypatch.setenv("SDWORKER_URL", url)  # the same without --url
    assert main(["generate", "a red cube", "-o", str(tmp_path / "env.png"), *FLAGS, "--quiet"]) == 0
    # One image: the native job of one image (a batch of two may differ from a batch of one in the last bit)
    assert pixels(tmp_path / "env.png") == pixels(native_pngs(url, 1)[0])


def test_generate_url_refuses_bad_input_in_one_line(
    url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out.png")
    for args, words in (
        (["--model", "demo"], "--model: the remote worker runs its own model"),
        (["--steps", "999"], "steps: 999 is out of range"),
        (["--scheduler", "nope"], "nope"),
        (["--init-image", str(tmp_path / "missing.png")], "--init-image"),
    ):
        assert main(["generate", "a cat", "--url", url, "-o", out, *args]) == 2
        err = capsys.readouterr().err
        assert words in err and err.count("\n") == 1, err
    assert main(["generate", "a cat", "--url", "http://127.0.0.1:9", "-o", out, "--quiet"]) == 1
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


def test_ctrl_c_cancels_the_remote_job_and_exits_130(url: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("SDWORKER_URL", None)
    before = {job["job_id"] for job in httpx.get(f"{url}/v1/jobs").json()["jobs"]}
    process = subprocess.Popen(
        [sys.executable, "-m", "sdworker", "generate", "a red cube", "--url", url, "-o", str(tmp_path / "x.png"),
         "--steps", "150", "--width", "256", "--height", "256"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        def running() -> list[str]:
            jobs = httpx.get(f"{url}/v1/jobs").json()["jobs"]
            return [j["job_id"] for j in jobs if j["job_id"] not in before and j["status"] == "running"]

        wait_for(lambda: bool(running()), timeout=60)
        job_id = running()[0]
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 130, err
    assert f"cancelled job {job_id}" in err.decode()
    wait_for(lambda: job_status(url, job_id) == "cancelled", timeout=30)

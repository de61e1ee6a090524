"""``sdworker serve`` takes rbee's hive spawn arguments, and rbee's device names."""

from __future__ import annotations

import pytest

from sdworker.cli import build_parser, main, settings_from_args
from sdworker.cli.devices import device_name
from sdworker.errors import ModelError

HIVE_ARGS = ["--worker-id", "w1", "--model", "demo", "--device", "GPU-1", "--port", "9301",
             "--queen-url", "http://queen:7833"]


def test_the_hives_arguments_become_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SDWORKER_DEVICE", raising=False)
    settings = settings_from_args(build_parser().parse_args(["serve", *HIVE_ARGS, "--heartbeat-seconds", "5"]))
    assert (settings.worker_id, settings.model, settings.device, settings.port) == ("w1", "demo", "cuda:1", 9301)
    assert (settings.queen_url, settings.heartbeat_seconds) == ("http://queen:7833", 5.0)
    assert settings.host == "127.0.0.1"  # still local unless asked


def test_defaults_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDWORKER_QUEEN_URL", "http://q:1")
    monkeypatch.setenv("SDWORKER_DEVICE", "metal")
    settings = settings_from_args(build_parser().parse_args(["serve"]))
    assert (settings.queen_url, settings.worker_id, settings.heartbeat_seconds) == ("http://q:1", None, 30.0)
    assert settings.device == "mps"


@pytest.mark.parametrize(
    ("given", "ours"),
    [("cpu", "cpu"), ("CPU-0", "cpu"), ("cuda", "cuda"), ("cuda:2", "cuda:2"), ("GPU-0", "cuda:0"),
     ("gpu-3", "cuda:3"), ("metal", "mps"), ("mps", "mps"), ("auto", "auto")],
)
def test_device_names(given: str, ours: str) -> None:
    assert device_name(given) == ours


@pytest.mark.parametrize("given", ["rocm", "GPU-", "cuda:x", "vulkan:0", "tpu"])
def test_unknown_devices_are_refused_with_the_names_we_take(given: str) -> None:
    with pytest.raises(ModelError, match="GPU-N") as refused:
        device_name(given)
    assert repr(given) in refused.value.message


def test_an_unknown_device_exits_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--device", "rocm:0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sdworker: error: --device rocm:0: 'rocm:0' is not a device") and err.count("\n") == 1

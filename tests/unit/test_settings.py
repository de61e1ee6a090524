"""Settings: declared once, validated at start, one line naming the flag or variable, secrets hidden."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from sdworker.cli import build_parser, main
from sdworker.cli.flags import COMMAND_FIELDS, flag_name, settings_from_args
from sdworker.errors import InvalidSettings
from sdworker.settings import Settings, redact_url, unknown_env_names

ROOT = Path(__file__).resolve().parents[2]
KEY = "k" * 16 + "-secret-key"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No stray SDWORKER_* variable from the caller's shell changes what these tests see."""
    import os

    for name in list(os.environ):
        if name.startswith("SDWORKER_") and not name.startswith("SDWORKER_TEST_"):
            monkeypatch.delenv(name)


def test_defaults_and_overrides() -> None:
    settings = Settings()
    assert settings.max_queue == 32 and settings.cors_origins == () and settings.redis_prefix == "sdw"
    assert settings.max_result_bytes == 512 * 1024 * 1024 and settings.claim_idle_seconds == 30.0
    assert Settings(max_queue=3, preview_format="png").max_queue == 3
    with pytest.raises(ValidationError):
        Settings(no_such_setting=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError):
        Settings().max_queue = 5  # type: ignore[misc]  # frozen


def test_env_values_are_parsed_and_init_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDWORKER_MAX_QUEUE", "7")
    monkeypatch.setenv("SDWORKER_API_KEYS", f"{KEY}1, {KEY}2")
    monkeypatch.setenv("SDWORKER_CORS_ORIGINS", "https://a.example,http://b.example:8080/")
    monkeypatch.setenv("SDWORKER_ALLOW_NO_AUTH", "yes")
    monkeypatch.setenv("SDWORKER_TAESD", "")  # empty = unset
    settings = Settings()
    assert settings.max_queue == 7 and settings.api_keys == (f"{KEY}1", f"{KEY}2") and settings.allow_no_auth
    assert settings.cors_origins == ("https://a.example", "http://b.example:8080") and settings.taesd == ()
    assert Settings(max_queue=9).max_queue == 9


@pytest.mark.parametrize(
    ("variable", "value", "allowed"),
    [
        ("SDWORKER_PREVIEW_FORMAT", "gif", "'jpeg', 'webp' or 'png'"),
        ("SDWORKER_MAX_QUEUE", "0", "greater than or equal to 1"),
        ("SDWORKER_PORT", "http", "valid integer"),
        ("SDWORKER_COMPILE_SIZES", "512x500", "multiples of 8"),
        ("SDWORKER_KEEPALIVE_SECONDS", "nan", "finite number"),
        ("SDWORKER_CORS_ORIGINS", "evil", "not an origin"),
        ("SDWORKER_ALLOW_NO_AUTH", "maybe", "valid boolean"),
    ],
)
def test_a_bad_variable_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], variable: str, value: str, allowed: str
) -> None:
    monkeypatch.setenv(variable, value)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"sdworker: error: {variable}={value}: ") and allowed in err, err


def test_a_bad_flag_names_the_flag(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDWORKER_MAX_QUEUE", "0")  # the flag wins over the (bad) variable
    args = build_parser().parse_args(["serve", "--max-queue", "4"])
    assert settings_from_args(args).max_queue == 4
    assert main(["serve", "--max-queue", "4", "--preview-every", "-1"]) == 2
    err = capsys.readouterr().err
    assert err == "sdworker: error: --preview-every -1: Input should be greater than or equal to 0\n"


def test_secrets_stay_out_of_repr_and_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings(
        api_keys=(KEY,), admin_api_keys=(KEY + "admin",), signing_secret="s" * 20 + "signing",
        redis_url="redis://user:hunter2-pass@redis.internal:6379/0",
    )
    text = repr(settings) + str(settings)
    assert "secret-key" not in text and "signing" not in text and "hunter2" not in text
    assert settings.redacted_redis_url() == "redis://***@redis.internal:6379/0"
    assert redact_url("redis://redis.internal:6379") == "redis://redis.internal:6379"
    monkeypatch.setenv("SDWORKER_REDIS_URL", "http://user:hunter2-pass@redis.internal")
    with pytest.raises(InvalidSettings) as caught:
        settings_from_args(build_parser().parse_args(["serve"]))
    assert "hunter2" not in caught.value.message and "SDWORKER_REDIS_URL" in caught.value.message
    with pytest.raises(ValidationError) as raw:
        Settings(api_keys=("short-" + "hunter2",))
    assert "hunter2" not in str(raw.value)
    with pytest.raises(InvalidSettings) as caught:
        settings_from_args(build_parser().parse_args(["serve", "--api-key", "hunter2"]))
    assert "hunter2" not in caught.value.message and "--api-key" in caught.value.message


def test_lists_from_repeated_flags_and_comma_lists() -> None:
    args = build_parser().parse_args(
        ["serve", "--api-key", f"{KEY}1", "--api-key", f"{KEY}2,{KEY}3", "--compile-sizes", "512x512,1024X768"]
    )
    settings = settings_from_args(args)
    assert settings.api_keys == (f"{KEY}1", f"{KEY}2", f"{KEY}3")
    assert settings.compile_sizes == ("512x512", "1024x768")


def test_every_setting_has_a_flag_and_help_shows_its_default() -> None:
    serve_help = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()  # type: ignore[union-attr]
    flagged = {name for fields in COMMAND_FIELDS.values() for name in fields}
    assert flagged == set(Settings.model_fields)
    for name in COMMAND_FIELDS["serve"]:
        assert flag_name(name) in serve_help, name
    assert "(default: 32; env SDWORKER_MAX_QUEUE)" in " ".join(serve_help.split())
    assert "--redis URL" in serve_help and "--api-key API_KEY" in serve_help
    assert set(COMMAND_FIELDS["serve"]) == set(Settings.model_fields) - {"health_port", "expect_models",
                                                                       "queue_timeout_seconds"}


def test_api_and_worker_nodes_get_their_own_flags() -> None:
    api, worker = COMMAND_FIELDS["api"], COMMAND_FIELDS["worker"]
    assert "default_model" in api and "model" not in api and "device" not in api and "redis_url" in api
    assert "port" not in worker and "health_port" in worker and "worker_id" in worker
    # A worker keeps no results (the stores' retention is the API node's) and checks its own pixels.
    assert "max_result_bytes" not in worker and "max_results" not in worker and "max_pixels" in worker
    args = build_parser().parse_args(["worker", "--redis", "redis://h:6379/0", "--worker-id", "gpu-1"])
    assert (args.redis_url, args.worker_id, args.command) == ("redis://h:6379/0", "gpu-1", "worker")


def test_listening_on_the_network_without_a_key_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--host 0.0.0.0" in err and "--allow-no-auth" in err and "--api-key" in err
    assert main(["serve", "--host", "0.0.0.0", "--api-keys-file", "/no/such/file"]) == 2
    assert "--api-keys-file /no/such/file: cannot read it" in capsys.readouterr().err


def test_a_check_across_settings_names_both(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SDWORKER_CLAIM_IDLE_SECONDS", "3")
    with pytest.raises(InvalidSettings) as caught:
        settings_from_args(build_parser().parse_args(["worker", "--lease-heartbeat-seconds", "2"]))
    assert caught.value.message == (
        "SDWORKER_CLAIM_IDLE_SECONDS (3.0) must be at least twice --lease-heartbeat-seconds (2.0), "
        "or live jobs would be taken over"
    )


def test_unknown_variables_are_named() -> None:
    environ = {"SDWORKER_MAX_QUEU": "3", "SDWORKER_MAX_QUEUE": "3", "SDWORKER_TEST_REAL_MODEL": "x", "HOME": "/"}
    assert unknown_env_names(environ) == ["SDWORKER_MAX_QUEU"]


def test_the_process_exits_2_with_one_line() -> None:
    """The real command, as an operator runs it (no model is loaded: the value is refused first)."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT), "SDWORKER_MAX_QUEUE": "0"}
    done = subprocess.run([sys.executable, "-m", "sdworker", "serve"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr == "sdworker: error: SDWORKER_MAX_QUEUE=0: Input should be greater than or equal to 1\n"


def _tiny_decoder_config(folder: Path, channels: int) -> str:
    folder.mkdir()
    (folder / "config.json").write_text(f'{{"_class_name": "AutoencoderTiny", "latent_channels": {channels}}}')
    return str(folder)


def test_taesd_takes_a_family_prefix_and_repeats(tmp_path: Path) -> None:
    sd, taef1 = _tiny_decoder_config(tmp_path / "taesd", 4), _tiny_decoder_config(tmp_path / "taef1", 16)
    args = build_parser().parse_args(["serve", "--taesd", sd, "--taesd", f"flux1={taef1}"])
    settings = settings_from_args(args)
    assert settings.taesd_folders() == {"sd1": sd, "sd2": sd, "flux1": taef1}
    assert Settings(taesd=f"sd3={taef1},zimage={taef1}", taesdxl=sd).taesd_folders() == {
        "sd3": taef1, "zimage": taef1, "sdxl": sd}


@pytest.mark.parametrize(("flag", "said"), [
    ("flux1={sd}", "its latent_channels is 4; FLUX.1 latents have 16"),
    ("{taef1}", "its latent_channels is 16; Stable Diffusion 1.x latents have 4"),
    ("flux3={taef1}", "'flux3' is not a model family"),
    ("flux2={taef1}", "TAEF2 is not an AutoencoderTiny and is not supported yet"),
    ("qwenimage={taef1}", "TAEHV (Wan's tiny decoder) is not an AutoencoderTiny and is not supported yet"),
    ("sd3={tmp}/missing", "no readable config.json"),
])
def test_a_taesd_of_the_wrong_family_exits_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, said: str
) -> None:
    folders = {"sd": _tiny_decoder_config(tmp_path / "taesd", 4), "taef1": _tiny_decoder_config(tmp_path / "taef1", 16),
               "tmp": str(tmp_path)}
    assert main(["serve", "--taesd", flag.format(**folders)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("sdworker: error: --taesd ") and said in err, err
@pytest.mark.parametrize("offload", ["model", "sequential"])
def test_offload_on_the_cpu_exits_2_with_one_line(offload: str) -> None:
    """Offload moves parts to a CUDA card as they run: on the CPU it is refused before anything loads."""
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "sdworker", "serve", "--offload", offload, "--device", "cpu"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and done.stderr.startswith(f"sdworker: error: --offload '{offload}' ")
    assert "--device is 'cpu'" in done.stderr and "CUDA" in done.stderr


def test_the_byte_budget_takes_units_and_the_count_is_unset_by_default() -> None:
    assert Settings().max_loaded_models is None and Settings().max_loaded_bytes is None
    assert Settings(max_loaded_bytes="12GiB").max_loaded_bytes == 12 * 1024**3
    assert Settings(max_loaded_bytes="20GB").max_loaded_bytes == 20 * 10**9
    assert Settings(max_loaded_bytes="1500000000").max_loaded_bytes == 1_500_000_000
    with pytest.raises(ValidationError, match="not a size"):
        Settings(max_loaded_bytes="12XB")
    assert Settings(offload="none", device="cpu").offload == "none"

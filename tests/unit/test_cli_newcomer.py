"""The command line as a newcomer meets it (issue #20, "what real clients found"): a mistyped model
path stops at once, ``--help`` talks to users, a typo in a flag shows that command's usage, every flag
says its default, and a first start shows no third-party noise that reads like an error."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from sdworker.cli import build_parser, main
from tests.live.server import ROOT, LiveServer, free_port

LIBRARY_NOISE = ("Writing model shards", "[transformers]", "gguf_writer", "FutureWarning")


def command_parser(command: str) -> argparse.ArgumentParser:
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    parser: argparse.ArgumentParser = subparsers.choices[command]
    return parser


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize(("command", "model", "said"), [
    ("serve", "{tmp}/nope", "no such file or folder"),
    ("serve", "{tmp}/empty", "the folder is not a diffusers model (no model_index.json)"),
    ("worker", "{tmp}/nope", "no such file or folder"),
])
def test_a_model_that_is_not_there_exits_2_before_listening(
    tmp_path: Path, command: str, model: str, said: str
) -> None:
    (tmp_path / "empty").mkdir()
    model = model.format(tmp=tmp_path)
    port = free_port()
    env = {**os.environ, "SDWORKER_CACHE_DIR": str(tmp_path / "cache"), "SDWORKER_DATA_DIR": str(tmp_path / "data")}
    where = ["--port", str(port)] if command == "serve" else ["--redis", "redis://127.0.0.1:1/0",
                                                               "--health-port", str(port)]
    done = subprocess.run([sys.executable, "-m", "sdworker", command, "--model", model, *where],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=90)
    assert done.returncode == 2, done.stderr
    assert done.stderr == f"sdworker: error: model {model}: {said}\n"  # one line, no uvicorn start-up lines
    assert not listening(port)
    assert not (tmp_path / "cache").exists()  # nothing was built for it either


def test_the_top_level_help_is_written_for_users(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0
    assert "Parses flags" not in out and "business logic" not in out and "``" not in out
    assert "sdworker serve --model demo" in out and 'sdworker generate "a cat" --model demo' in out


@pytest.mark.parametrize(("argv", "command"), [
    (["serve", "--prot", "1"], "serve"),
    (["generate", "a cat", "--stepz", "3"], "generate"),
    (["worker", "--redis", "redis://x", "--helth-port", "1"], "worker"),
])
def test_a_typo_in_a_flag_shows_that_commands_usage(
    capsys: pytest.CaptureFixture[str], argv: list[str], command: str
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith(f"usage: sdworker {command} "), err
    assert err.endswith(f"sdworker {command}: error: unrecognized arguments: {' '.join(argv[-2:])}\n"), err


@pytest.mark.parametrize("command", ["generate", "serve", "worker"])
def test_every_flag_has_help_that_says_its_default(command: str) -> None:
    parser = command_parser(command)
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = "/".join(action.option_strings) or action.dest
        assert action.help, f"{command} {name}: no help text"
        if action.option_strings:
            assert "default" in action.help, f"{command} {name}: its help does not say its default: {action.help}"


def test_the_size_help_says_what_generate_really_does() -> None:
    """Locally an unset size is 512 (or the init image's), remotely the model's own: the help says both."""
    width = next(a for a in command_parser("generate")._actions if "--width" in a.option_strings)
    assert width.help is not None and "init image" in width.help and "512" in width.help
    assert "native size" in width.help


@pytest.mark.slow
def test_a_first_start_builds_the_demo_without_library_noise(tmp_path: Path) -> None:
    """The first ``serve --model demo`` builds the demo bundle: no progress bars, no library advice, no
    gguf INFO lines among the server's log; sdworker's own INFO lines stay."""
    server = LiveServer(tmp_path / "cache", free_port(), "--store", "memory", "--device", "cpu",
                        log_path=tmp_path / "serve.log")
    try:
        server.wait_ready(timeout=240)
    finally:
        code = server.stop()
    log = (tmp_path / "serve.log").read_text(errors="replace")
    assert code == 0, log
    assert "sdworker serving model 'demo'" in log and "Uvicorn running on" in log
    assert not [noise for noise in LIBRARY_NOISE if noise in log], log

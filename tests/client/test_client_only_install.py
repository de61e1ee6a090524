"""The client installs alone - ``pip install sdworker`` into a fresh virtual environment, no torch,
no engine, no server packages - and drives a live worker, from Python and from the command line."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from live.server import ROOT, LiveServer

pytestmark = [pytest.mark.live, pytest.mark.slow, pytest.mark.timeout(600)]

SCRIPT = """
import sys
from sdworker.client import Client

with Client(sys.argv[1]) as client:
    result = client.generate("a red cube", steps=2, width=64, height=64, seed=3)
    assert result.images[0].size == (64, 64) and result.seed == 3
heavy = [m for m in ("torch", "diffusers", "transformers", "fastapi", "uvicorn", "numpy") if m in sys.modules]
assert not heavy, heavy
print("client ok")
"""


def pypi_reachable() -> bool:
    try:
        socket.create_connection(("pypi.org", 443), timeout=5).close()
    except OSError:
        return False
    return True


def test_the_client_alone_drives_a_live_worker(server: LiveServer, tmp_path: Path) -> None:
    if not pypi_reachable():
        pytest.skip("PyPI is not reachable: cannot install the client into a fresh environment")
    source = tmp_path / "src"  # a copy, so the build leaves nothing in the work tree
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "sdworker", source / "sdworker", ignore=shutil.ignore_patterns("__pycache__"))
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "SDWORKER_URL", "VIRTUAL_ENV")}
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    python, sdworker = venv / "bin" / "python", venv / "bin" / "sdworker"
    install = subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", str(source)],
                             env=env, cwd=tmp_path, capture_output=True, text=True, timeout=480)
    assert install.returncode == 0, install.stdout + install.stderr

    def run(*command: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)

    assert run(python, "-c", "import torch").returncode != 0  # the engine is not there
    driven = run(python, "-c", SCRIPT, server.url)
    assert driven.returncode == 0 and "client ok" in driven.stdout, driven.stderr
    made = run(sdworker, "generate", "a red cube", "--url", server.url, "-o", tmp_path / "out.png", "--steps", "2",
               "--width", "64", "--height", "64", "--seed", "3", "--quiet")
    assert made.returncode == 0 and made.stdout.strip() == str(tmp_path / "out.png"), made.stderr
    refused = run(sdworker, "serve")
    assert refused.returncode == 2 and "pip install 'sdworker[all]'" in refused.stderr
    assert refused.stderr.count("\n") == 1, refused.stderr

"""``/mcp`` follows the settings (``--no-mcp``), and ``sdworker mcp`` stays client-only."""

from __future__ import annotations

import subprocess
import sys

from sdworker.cli import build_parser, settings_from_args
from tests.api.helpers import running_app
from tests.live.server import ROOT

INITIALIZE = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "MCP-Protocol-Version": "2026-07-28"}


async def test_no_mcp_turns_the_route_off() -> None:
    async with running_app(mcp=False) as app:
        answer = await app.client.post("/mcp", json=INITIALIZE, headers=MCP_HEADERS)
        assert answer.status_code == 404


def test_the_flag_reaches_the_settings() -> None:
    assert settings_from_args(build_parser().parse_args(["serve", "--no-mcp"])).mcp is False
    assert settings_from_args(build_parser().parse_args(["api", "--no-mcp"])).mcp is False
    assert settings_from_args(build_parser().parse_args(["serve"])).mcp is True


def test_the_stdio_server_imports_no_torch_and_no_server_code() -> None:
    script = (
        "import sys, sdworker.mcp.stdio, sdworker.cli\n"
        "heavy = [m for m in ('torch', 'diffusers', 'fastapi', 'numpy', 'sdworker.api', 'sdworker.jobs',"
        " 'sdworker.engine') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_mcp_without_a_url_is_a_usage_error() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "sdworker", "mcp"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 2 and "--url" in done.stderr

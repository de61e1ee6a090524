"""The documentation: it builds in strict mode, and every example marked ``<!-- demo-test -->`` (a
``bash`` or ``python`` block right after the marker) runs against a live ``sdworker serve --model demo``
(the live tests' shared server: its body limit and small queue are no obstacle to an example).

Examples are written against ``make run``'s address, http://127.0.0.1:7833 (or ``port=7833``, as
``webuiapi`` takes it); the test points them at its own server by replacing that address. Mark only
examples that run against the demo model in seconds.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.live.server import ROOT, LiveServer

DOCS = ROOT / "docs"
DOCS_ADDRESS = "http://127.0.0.1:7833"
MARKED = re.compile(r"<!-- demo-test -->\s*\n```(bash|python)\n(.*?)\n```", re.S)


def marked_examples() -> list[tuple[str, str, str]]:
    """(page:line, language, code) of every marked block."""
    found = []
    for page in sorted(DOCS.rglob("*.md")):
        text = page.read_text()
        for match in MARKED.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            found.append((f"{page.relative_to(DOCS)}:{line}", match.group(1), match.group(2)))
    return found


EXAMPLES = marked_examples()


def test_the_docs_mark_examples_to_run() -> None:
    pages = {where.split(":")[0] for where, _, _ in EXAMPLES}
    assert {"getting-started.md", "client.md", "cli.md", "api/mcp.md"} <= pages, pages


@pytest.mark.skipif(shutil.which("mkdocs", path=str(Path(sys.executable).parent)) is None, reason="no mkdocs")
def test_the_site_builds_strict(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "mkdocs"), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    reference = (tmp_path / "site" / "reference" / "http-api" / "index.html").read_text()
    assert "/v1/jobs/{job_id}/stream" in reference and "schema-jobrequest" in reference


@pytest.mark.live
@pytest.mark.parametrize(("where", "language", "code"), EXAMPLES, ids=[where for where, _, _ in EXAMPLES])
def test_example_runs(where: str, language: str, code: str, live_server: LiveServer, tmp_path: Path) -> None:
    code = code.replace(DOCS_ADDRESS, live_server.url).replace("port=7833", f"port={urlsplit(live_server.url).port}")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "PYTHONPATH": str(ROOT)}
    command = ["bash", "-euo", "pipefail", "-c", code] if language == "bash" else [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{where} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    for name in set(re.findall(r"[\w-]+\.png", code)):  # an example that names a PNG wrote that PNG
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG"), f"{where}: {name}"

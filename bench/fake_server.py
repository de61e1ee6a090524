"""A real ``sdworker serve`` process (uvicorn, the CLI's draining server, real signals) around the
FakeEngine, for live tests and benches that need an engine that dies, hangs or runs at a set pace.

    SDWORKER_PORT=7900 SDWORKER_TEST_FAKE_STEP_SECONDS=0.05 python bench/fake_server.py

Settings come from the ``SDWORKER_*`` environment as for ``serve``; the FakeEngine's knobs from
``SDWORKER_TEST_FAKE_STEP_SECONDS``, ``..._FATAL_AT_STEP`` (the generation thread dies there) and
``..._STUCK_AT_STEP`` (the step blocks for good).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere without installing


def _knob(name: str) -> int | None:
    value = os.environ.get(f"SDWORKER_TEST_FAKE_{name}")
    return int(value) if value else None


def main() -> None:
    import logging

    from sdworker.api.app import create_app
    from sdworker.cli.uvicorn_server import serve_app
    from sdworker.engine.fake import FakeEngine
    from sdworker.settings import Settings

    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    engine = FakeEngine(
        step_seconds=float(os.environ.get("SDWORKER_TEST_FAKE_STEP_SECONDS", "0") or 0),
        fatal_at_step=_knob("FATAL_AT_STEP"),
        stuck_at_step=_knob("STUCK_AT_STEP"),
    )
    serve_app(create_app(settings, engine), settings, "INFO")


if __name__ == "__main__":
    main()

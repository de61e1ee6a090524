"""A real server process for the restart tests: uvicorn with the real app and the SQLite store in
``--data-dir``, and the fake engine (so it starts in a second and needs no model).

    python -m tests.integrator.fake_serve --port N --data-dir DIR --receiver-ok
"""

from __future__ import annotations

import argparse
from pathlib import Path

import uvicorn

from sdworker.api.app import create_app
from sdworker.engine.fake import FakeEngine
from sdworker.settings import Settings
from sdworker.stores.sqlite import SqliteStore

SECRET = "restart-test-webhook-secret"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--step-seconds", type=float, default=0.0)
    args = parser.parse_args()
    settings = Settings(port=args.port, webhook_allow_private=True, webhook_secret=(SECRET,))
    app = create_app(settings, FakeEngine(step_seconds=args.step_seconds), store=SqliteStore(args.data_dir))
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()

"""Debian's Chromium, headless, as every browser test here starts it (nothing is downloaded).

The flags keep it off this machine's closed network: without them Chromium tries Google's services at
start and fills the log with refused connections."""

from __future__ import annotations

from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

"""Frozen event records and the event bus (fan-out to watchers, bounded history for replay)."""

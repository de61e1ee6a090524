"""The SQLite store: the durable default of ``sdworker serve``, in ``--data-dir``.

Layout of the data folder::

    jobs.db          the jobs and their events (Python's own sqlite3, WAL mode)
    lock             held (flock) by the one ``serve`` that uses the folder
    secret           the generated signing secret (mode 0600), so signed URLs survive a restart
    outputs/DATE/    the final PNGs (A1111's ``parameters`` chunk in each), which the jobs point to;
                     with ``--results-s3`` they are objects in a bucket instead (``stores/results.py``)

Durability: a submit and a terminal state are written with ``synchronous=FULL`` (on disk before the
answer); everything else (start, events) with ``NORMAL``, which in WAL mode can lose the last writes
before a power cut but never corrupts the file; a process killed with SIGKILL loses nothing.

The schema carries ``PRAGMA user_version``: an older file is migrated forward at open, a newer one
refused (``InvalidSettings``: the command exits 2), as is a folder another ``serve`` holds.

Only this module knows SQL; it holds no rule of the job's life (``jobs/service.py`` does).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import fields
from pathlib import Path
from typing import IO, Any

from sdworker.errors import InvalidSettings
from sdworker.events.types import (
    JobCompleted,
    JobEnded,
    JobEvent,
    JobFailed,
    JobQueued,
    JobRetrying,
    JobStarted,
    ModelLoading,
    StepProgressed,
)
from sdworker.jobs.outbox import WebhookMessage
from sdworker.jobs.spec import JobSpec
from sdworker.jobs.state import JobStatus
from sdworker.jobs.store import JobRecord, StoredJob
from sdworker.stores.results import FilesystemResults, ResultStore

SCHEMA_VERSION = 2
# Each entry takes the file from version N-1 to N (index 0: an empty file to version 1).
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL UNIQUE,
        status TEXT NOT NULL,
        spec TEXT NOT NULL,
        owner TEXT,
        idempotency_key TEXT,
        attempt INTEGER NOT NULL,
        step INTEGER NOT NULL,
        total INTEGER NOT NULL,
        started_at REAL,
        finished_at REAL,
        error_code TEXT,
        error_message TEXT,
        seeds TEXT NOT NULL,
        width INTEGER,
        height INTEGER,
        images TEXT NOT NULL
    );
    CREATE TABLE events (
        job_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        at REAL NOT NULL,
        kind TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    ) WITHOUT ROWID;
    """,
    # 2: the webhook outbox (jobs/outbox.py): one row per message, its attempts in ``data``.
    """
    CREATE TABLE webhooks (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        message_id TEXT NOT NULL UNIQUE,
        job_id TEXT NOT NULL,
        state TEXT NOT NULL,
        data TEXT NOT NULL
    );
    CREATE INDEX webhooks_job ON webhooks (job_id);
    CREATE INDEX webhooks_state ON webhooks (state);
    """,
)
EVENT_TYPES: dict[str, type[JobEvent]] = {
    cls.__name__: cls
    for cls in (JobQueued, JobStarted, JobRetrying, ModelLoading, StepProgressed, JobCompleted, JobFailed, JobEnded)
}
_BASE_FIELDS = frozenset({"job_id", "seq", "at", "images"})


def default_data_dir() -> Path:
    """The XDG data folder: ``$XDG_DATA_HOME/sdworker``, else ``~/.local/share/sdworker``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sdworker"


def signing_secret(data_dir: Path) -> str:
    """The folder's signing secret, generated at the first start (mode 0600, readable by us alone)."""
    path = data_dir / "secret"
    with contextlib.suppress(FileExistsError):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


class SqliteStore:
    name = "sqlite"
    durable = True

    def __init__(self, data_dir: Path, *, keep_outputs: bool = False, results: ResultStore | None = None) -> None:
        self.data_dir = data_dir
        self.keep_outputs = keep_outputs
        # The PNGs' home: files in the outputs folder, or a bucket (``--results-s3``). The jobs table
        # keeps each image's reference (a relative path or an object key) and size.
        self.results: ResultStore = results or FilesystemResults(data_dir)
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise InvalidSettings(f"--data-dir {data_dir}: cannot create it ({exc.strerror})") from None
        self._lock = _take_lock(data_dir / "lock")
        self.path = data_dir / "jobs.db"
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    # --- JobStore ------------------------------------------------------------------------------

    def load(self) -> list[StoredJob]:
        rows = self._db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs ORDER BY seq").fetchall()
        loaded = []
        for row in rows:
            record = _record(row)
            events = () if record.status.finished else tuple(self._events(record.job_id, with_images=False))
            loaded.append(StoredJob(record=record, events=events))
        return loaded

    def save(self, record: JobRecord, *, durable: bool = False) -> None:
        values = (
            record.job_id, record.status.value, json.dumps(record.spec.to_dict()), record.spec.owner,
            record.idempotency_key, record.attempt, record.step, record.total, record.started_at,
            record.finished_at, record.error_code, record.error_message, json.dumps(list(record.seeds)),
            record.width, record.height, "[]",
        )
        sql = (
            f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' * len(values))}) "
            "ON CONFLICT(job_id) DO UPDATE SET "
            + ", ".join(f"{c} = excluded.{c}" for c in _JOB_COLUMNS.split(", ") if c not in ("job_id", "images"))
        )
        self._write(sql, values, durable=durable)

    def append_event(self, event: JobEvent) -> None:
        data = {f.name: getattr(event, f.name) for f in fields(event) if f.name not in _BASE_FIELDS}
        self._write(
            "INSERT OR IGNORE INTO events (job_id, seq, at, kind, data) VALUES (?, ?, ?, ?, ?)",
            (event.job_id, event.seq, event.at, type(event).__name__, json.dumps(data)),
        )

    def events(self, job_id: str) -> list[JobEvent]:
        return self._events(job_id, with_images=True)

    def write_images(self, job_id: str, images: tuple[bytes, ...]) -> tuple[str, ...]:
        """Each PNG to the result store (``outputs/<date it finished>/<job id>-<n>.png``, or the bucket),
        in a thread, before the database points to it."""
        return tuple(self.results.put(job_id, index, png) for index, png in enumerate(images))

    def save_images(self, record: JobRecord, refs: tuple[str, ...], sizes: tuple[int, ...]) -> None:
        self._image_paths[record.job_id] = list(refs)
        stored = [[ref, size] for ref, size in zip(refs, sizes, strict=True)]
        self._write("UPDATE jobs SET images = ? WHERE job_id = ?", (json.dumps(stored), record.job_id))

    def discard_images(self, refs: Iterable[str]) -> None:
        self.results.delete(refs)

    def image(self, job_id: str, index: int) -> bytes | None:
        paths = self._paths(job_id)
        if not 0 <= index < len(paths):
            return None
        return self.results.get(paths[index])

    def delete(self, job_ids: Iterable[str]) -> None:
        ids = list(job_ids)
        for job_id in ids:
            if not self.keep_outputs:
                self.results.delete(self._paths(job_id))
            self._image_paths.pop(job_id, None)
        for job_id in ids:
            self._write("DELETE FROM events WHERE job_id = ?", (job_id,))
            self._write("DELETE FROM webhooks WHERE job_id = ?", (job_id,))
            self._write("DELETE FROM jobs WHERE job_id = ?", (job_id,))

    def save_webhook(self, message: WebhookMessage) -> None:
        """Durable: a message owed, or an attempt made, is on disk before the outbox goes on."""
        self._write(
            "INSERT INTO webhooks (message_id, job_id, state, data) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(message_id) DO UPDATE SET state = excluded.state, data = excluded.data",
            (message.message_id, message.job_id, message.state, json.dumps(message.to_dict())),
            durable=True,
        )

    def pending_webhooks(self) -> list[WebhookMessage]:
        rows = self._db.execute("SELECT data FROM webhooks WHERE state = 'pending' ORDER BY seq").fetchall()
        return [WebhookMessage.from_dict(json.loads(data)) for (data,) in rows]

    def webhooks(self, job_id: str) -> list[WebhookMessage]:
        rows = self._db.execute("SELECT data FROM webhooks WHERE job_id = ? ORDER BY seq", (job_id,)).fetchall()
        return [WebhookMessage.from_dict(json.loads(data)) for (data,) in rows]

    def close(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.close()
        self._lock.close()  # releases the flock

    # --- internals -----------------------------------------------------------------------------

    _image_paths: dict[str, list[str]]

    def _migrate(self) -> None:
        self._image_paths = {}
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            self.close()
            raise InvalidSettings(
                f"--data-dir {self.data_dir}: its database is schema version {version}, made by a newer sdworker; "
                f"this one knows up to {SCHEMA_VERSION}"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            self._db.executescript(f"BEGIN; {MIGRATIONS[target - 1]}; PRAGMA user_version = {target}; COMMIT;")
        for job_id, images in self._db.execute("SELECT job_id, images FROM jobs"):
            self._image_paths[job_id] = [path for path, _ in json.loads(images)]

    def _paths(self, job_id: str) -> list[str]:
        return self._image_paths.get(job_id, [])

    def _write(self, sql: str, values: tuple[Any, ...], *, durable: bool = False) -> None:
        if durable:
            self._db.execute("PRAGMA synchronous=FULL")
            try:
                self._db.execute(sql, values)
            finally:
                self._db.execute("PRAGMA synchronous=NORMAL")
        else:
            self._db.execute(sql, values)

    def _events(self, job_id: str, *, with_images: bool) -> list[JobEvent]:
        rows = self._db.execute(
            "SELECT seq, at, kind, data FROM events WHERE job_id = ? ORDER BY seq", (job_id,)
        ).fetchall()
        events: list[JobEvent] = []
        for seq, at, kind, data in rows:
            cls = EVENT_TYPES.get(kind)
            if cls is None:
                continue  # a kind this version does not know (a newer one wrote it): skipped
            values = json.loads(data)
            if cls is JobCompleted:
                count = len(self._paths(job_id))
                images = tuple(self.image(job_id, i) or b"" for i in range(count)) if with_images else ()
                values["seeds"] = tuple(values["seeds"])
                values["images"] = images
            events.append(cls(job_id=job_id, seq=seq, at=at, **values))
        return events


_JOB_COLUMNS = (
    "job_id, status, spec, owner, idempotency_key, attempt, step, total, started_at, finished_at, "
    "error_code, error_message, seeds, width, height, images"
)


def _record(row: tuple[Any, ...]) -> JobRecord:
    (_job_id, status, spec, _owner, key, attempt, step, total, started_at, finished_at, code, message, seeds,
     width, height, images) = row
    return JobRecord(
        spec=JobSpec.from_dict(json.loads(spec)),
        status=JobStatus(status),
        attempt=attempt,
        step=step,
        total=total,
        started_at=started_at,
        finished_at=finished_at,
        error_code=code,
        error_message=message,
        image_sizes=tuple(int(size) for _, size in json.loads(images)),
        seeds=tuple(json.loads(seeds)),
        width=width,
        height=height,
        idempotency_key=key,
    )


def _take_lock(path: Path) -> IO[str]:
    handle = open(path, "a")  # noqa: SIM115 - held open for the store's life: the lock is the open file
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise InvalidSettings(
            f"--data-dir {path.parent}: another sdworker serve uses this folder (one serve per data folder)"
        ) from None
    return handle

"""``sdworker serve``: the HTTP service and one generation worker in one process, under uvicorn
(``cli/uvicorn_server.py`` says how shutdown drains first).

Where jobs are kept: SQLite in ``--data-dir`` by default (a restart resumes them; ``stores/sqlite.py``),
``--store memory`` for nothing on disk, or ``--redis URL`` to join a fleet: jobs live in Redis and
this process is both an API node and a GPU worker of it."""

from __future__ import annotations

import argparse
import logging

from sdworker.api.app import create_app
from sdworker.cli.flags import check_exposure, check_files, settings_from_args
from sdworker.cli.library_noise import quiet_libraries
from sdworker.cli.uvicorn_server import configure_logging, serve_app
from sdworker.settings import Settings
from sdworker.stores.results import S3Results
from sdworker.stores.sqlite import SqliteStore, default_data_dir, signing_secret

log = logging.getLogger("sdworker.serve")

DAY_SECONDS = 24 * 3600.0
GiB = 1024**3
# The SQLite store keeps what A1111 users expect from an outputs folder: a month, up to 5 GiB.
SQLITE_RETENTION = {"result_ttl_seconds": 30 * DAY_SECONDS, "max_result_bytes": 5 * GiB, "max_results": 100_000}


def run_serve(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    check_exposure(settings)
    check_files(settings)
    from sdworker.cli.model_check import check_model  # imports torch: only when this command runs

    check_model(settings)
    level = configure_logging(args)
    quiet_libraries(level)
    store = None
    if not settings.redis_url and settings.store != "memory":
        # Before the engine import: a second serve on the same folder exits 2 at once.
        results = S3Results(settings.results_s3) if settings.results_s3 else None  # else the outputs folder
        store = SqliteStore(settings.data_dir or default_data_dir(), keep_outputs=settings.keep_outputs,
                            results=results)
        settings = sqlite_settings(settings, store)
    # Imported here: torch and diffusers load only when a server really starts.
    from sdworker.engine.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine(settings)
    if settings.redis_url:
        from sdworker.jobs.metrics import ServiceMetrics
        from sdworker.stores.redis.service import RedisJobService
        from sdworker.stores.redis.source import RedisJobSource

        metrics = ServiceMetrics()
        service = RedisJobService(settings, metrics)
        source = RedisJobSource(settings, metrics=metrics)
        app = create_app(settings, engine, service=service, source=source, metrics=metrics)
    else:
        app = create_app(settings, engine, store=store)
    where = f"jobs in {store.path}" if store is not None else "jobs in memory" if not settings.redis_url else "Redis"
    log.info("sdworker serving model %r on http://%s:%d (%s)", settings.model, settings.host, settings.port, where)
    serve_app(app, settings, level)
    return 0


def sqlite_settings(settings: Settings, store: SqliteStore) -> Settings:
    """The SQLite defaults for what was not given (retention), and the folder's signing secret."""
    update: dict[str, object] = {k: v for k, v in SQLITE_RETENTION.items() if k not in settings.model_fields_set}
    if settings.signing_secret is None:
        update["signing_secret"] = signing_secret(store.data_dir)
    return settings.model_copy(update=update)

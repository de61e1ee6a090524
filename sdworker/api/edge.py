"""What sits between the socket and the routes, installed by ``create_app`` in one call.

Outermost first: ``EdgeGuard`` (Host, Origin, CORS, content type, HEAD, one log line per 500; see
``api/guard.py``), then ``BodyLimitMiddleware`` (413 above ``max_body_bytes``, 408 for a body too
slow), then the app. Also the offline ``/docs`` (``api/docs.py``) and the error answers in the OpenAPI schema
(``api/responses.py``). Socket-level limits (header size and read time) are uvicorn's, set in
``cli/serve.py: uvicorn_config``.
"""

from __future__ import annotations

from fastapi import FastAPI

from sdworker.api.docs import router as docs_router
from sdworker.api.errors import BodyLimitMiddleware
from sdworker.api.guard import EdgeGuard
from sdworker.api.responses import document_auth, document_errors, document_limits
from sdworker.settings import Settings


def install_edge(app: FastAPI, settings: Settings) -> None:
    app.include_router(docs_router)
    document_errors(app)
    document_limits(app, settings)
    document_auth(app, settings)
    # add_middleware puts each new one outside the previous: the guard ends up outermost.
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_seconds=settings.body_timeout_seconds,
        body_min_rate_bytes=settings.body_min_rate_bytes,
    )
    app.add_middleware(EdgeGuard, settings=settings)

"""What sits between the socket and the routes, installed by ``create_app``.

Outermost first: ``EdgeGuard`` (Host, Origin, CORS, content type, HEAD, one log line per 500; see
``api/guard.py``), then ``HealthFirst`` and the key check (``api/auth.py``, added by ``create_app``),
then ``BodyLimitMiddleware`` (413 above ``max_body_bytes``, 408 for a body too slow, 400 for UTF-16/32
JSON), then the app. The body limit sits inside the key check so that a request without a valid key
is answered 401 before any of its body is read: otherwise anyone who can reach the port could make
the server buffer ``max_body_bytes`` per connection (20 keyless 30 MB posts took RSS from 104 to 761
MB, and 525 MB stayed). ``install_body_limit`` is called before the keys are added, ``install_edge``
after. Also the offline ``/docs`` (``api/docs.py``) and the error answers in the OpenAPI schema
(``api/responses.py``). Socket-level limits (header size and read time) are uvicorn's, set in
``cli/uvicorn_server.py: uvicorn_config``.
"""

from __future__ import annotations

from fastapi import FastAPI

from sdworker.api.docs import router as docs_router
from sdworker.api.errors import BodyLimitMiddleware
from sdworker.api.guard import EdgeGuard
from sdworker.api.responses import document_auth, document_errors, document_limits
from sdworker.settings import Settings


def install_body_limit(app: FastAPI, settings: Settings) -> None:
    """The body reader, inside everything added after it (add_middleware wraps what is there)."""
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=settings.max_body_bytes,
        body_timeout_seconds=settings.body_timeout_seconds,
        body_min_rate_bytes=settings.body_min_rate_bytes,
    )


def install_edge(app: FastAPI, settings: Settings) -> None:
    """The guard, outermost (call it last), the offline docs and the documented answers."""
    app.include_router(docs_router)
    document_errors(app)
    document_limits(app, settings)
    document_auth(app, settings)
    app.add_middleware(EdgeGuard, settings=settings)

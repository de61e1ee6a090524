"""The client's errors: one small tree, each carrying the server's ``code``, ``message`` and ``field``.

Catch ``ClientError`` for everything the client raises on purpose; transport problems it could not
recover from (after its bounded retries) are ``ConnectionLost``, never a bare httpx exception.
``code`` is the server's stable error code (``queue_full``, ``invalid_request``, ``cancelled``, ...);
match on it or on the class, never on the message. Tree::

    ClientError                       code, message, field
    ├── APIError                      the server answered with an error status; status_code, body
    │   ├── BadRequest                400, 413, 422: the request itself is wrong (``field`` names why)
    │   ├── Unauthorized              401, 403: a missing or refused API key
    │   ├── NotFound                  404: no such job (or its result expired)
    │   ├── QueueFull                 429: retry_after_seconds from ``Retry-After``
    │   └── ServerError               5xx (503 ``not_ready`` while the model loads or shutting down)
    ├── JobFailed                     the job's stream ended with an ``error`` event; job_id, event_id
    │   └── JobCancelled              ... whose code is ``cancelled``
    └── ConnectionLost                the server could not be reached again within the reconnect budget
"""

from __future__ import annotations

from typing import Any


class ClientError(Exception):
    """Base of every error the client raises on purpose."""

    def __init__(self, message: str, *, code: str = "client_error", field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.field = field

    def __str__(self) -> str:
        return self.message


class APIError(ClientError):
    """The server answered with an error status. ``body`` is its JSON error body (or ``{}``)."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        code: str = "http_error",
        field: str | None = None,
        body: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, code=code, field=field)
        self.status_code = status_code
        self.body = body or {}


class BadRequest(APIError):
    pass


class Unauthorized(APIError):
    pass


class NotFound(APIError):
    pass


class QueueFull(APIError):
    def __init__(self, message: str, *, retry_after_seconds: float, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after_seconds = retry_after_seconds


class ServerError(APIError):
    pass


class JobFailed(ClientError):
    """The job ended with an ``error`` event (``generation_failed``, ``shutting_down``, ...)."""

    def __init__(self, message: str, *, code: str, job_id: str, event_id: str | None = None) -> None:
        super().__init__(message, code=code)
        self.job_id = job_id
        self.event_id = event_id


class JobCancelled(JobFailed):
    """The job was cancelled (by ``cancel``, by anyone else, or before it started)."""


class ConnectionLost(ClientError):
    """Every reconnect attempt failed; ``__cause__`` is the last transport error."""

    def __init__(self, message: str) -> None:
        super().__init__(message, code="connection_lost")

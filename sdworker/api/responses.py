"""The error answers each route really gives, for the OpenAPI schema, in one table.

Every error body has one shape (``ErrorBody``, see ``api/errors.py``). Every operation can answer
``400`` (a Host that is not served here, malformed JSON) and ``403`` (a foreign Origin), from the
edge guard; the table adds what the route itself returns. ``document_errors`` writes them into the
generated schema, so clients and schemathesis know each status and its body.

The same dicts (``responses(404, 409)``) can be passed to a route decorator's ``responses=``; the
table exists because it documents routers that other modules own in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel

from sdworker.api.auth import PUBLIC_PATHS, PUBLIC_PREFIXES
from sdworker.api.errors import dialect
from sdworker.api.signing import SIGNED_PATH
from sdworker.settings import Settings


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    """``{"error": {"code", "message", "field"?}, "code", "message"}``."""

    error: ErrorDetail
    code: str
    message: str


DESCRIPTIONS = {
    400: "Malformed JSON, a compressed body, a bad event id, or a Host that is not served here",
    403: "The request's Origin is neither this service nor a listed CORS origin, or the route needs an admin API key",
    404: "No such job (or its result expired), or no worker serves the model named",
    409: "The job has not finished (no image yet)",
    413: "The body or a declared image size is above the limit",
    415: "The body is not application/json",
    422: "A field's value is refused; the message names it and the allowed range",
    429: "The queue is full, or the API key's quota (max_queued, rate) is used; retry after Retry-After seconds",
    503: "Not ready: the model is loading, the worker died, Redis is unreachable, or shutting down",
}

EDGE_ERRORS = (400, 403)
ERROR_SCHEMAS = {"native": "ErrorBody", "openai": "OpenAIErrorBody", "a1111": "A1111ErrorBody"}
BODY_ERRORS = (413, 415, 422)

# (method, path) -> the statuses the route itself returns, beyond EDGE_ERRORS.
ROUTE_ERRORS: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/v1/jobs"): (*BODY_ERRORS, 404, 429, 503),
    ("get", "/v1/jobs"): (422,),
    ("get", "/v1/jobs/{job_id}"): (404,),
    ("delete", "/v1/jobs/{job_id}"): (404,),
    ("get", "/v1/jobs/{job_id}/image"): (404, 409, 422),
    ("get", "/v1/jobs/{job_id}/stream"): (404,),
    ("get", "/v1/jobs/{job_id}/webhooks"): (404,),
    ("get", "/v1/webhooks/secret"): (503,),  # a fleet without a shared secret
    ("get", "/health"): (),
    ("get", "/ready"): (),  # its 503 has the readiness body, declared on the route
    ("get", "/v1/info"): (),
    ("get", "/metrics"): (),
    ("get", "/v1/workers"): (503,),
    ("get", "/v1/dead"): (422, 503),
    ("post", "/v1/dead/{job_id}/requeue"): (404, 429, 503),
}


class OpenAIErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class OpenAIErrorBody(BaseModel):
    """The OpenAI dialect's error (``/v1/images/*``, ``/v1/models``): what the ``openai`` SDK parses."""

    error: OpenAIErrorDetail


class A1111ErrorBody(BaseModel):
    """The A1111 dialect's error (``/sdapi/*``)."""

    error: str
    detail: str
    body: Any = None
    errors: str | None = None


# The compat front doors answer these beyond the edge's, in their own error shapes (api/errors.py).
DIALECT_ERRORS = {
    "openai": (400, 404, 413, 415, 429, 499, 503),
    "a1111": (404, 413, 415, 422, 429, 499, 503),
}
DESCRIPTIONS_EXTRA = {499: "The client hung up before the job finished; the job was cancelled"}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route decorator: each status with its description and ``ErrorBody``."""
    return {status: {"model": ErrorBody, "description": DESCRIPTIONS[status]} for status in statuses}


def document_errors(app: FastAPI) -> None:
    """Make ``app.openapi()`` list each operation's error answers with the ``ErrorBody`` schema."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(ErrorBody.model_json_schema(ref_template="#/components/schemas/{model}")["$defs"])
        for model in (ErrorBody, OpenAIErrorBody, A1111ErrorBody):
            full = model.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(full.get("$defs", {}))
            components[model.__name__] = {k: v for k, v in full.items() if k != "$defs"}
        for path, operations in schema.get("paths", {}).items():
            kind = dialect(path)
            ref = {"$ref": f"#/components/schemas/{ERROR_SCHEMAS[kind]}"}
            for method, operation in operations.items():
                extra = DIALECT_ERRORS.get(kind, ROUTE_ERRORS.get((method, path), ()))
                statuses = sorted({*EDGE_ERRORS, *extra})
                answers = operation.setdefault("responses", {})
                for status in statuses:
                    if str(status) in answers and status != 422:
                        continue  # the route declared its own body for this status
                    answers[str(status)] = {
                        "description": DESCRIPTIONS.get(status) or DESCRIPTIONS_EXTRA[status],
                        "content": {"application/json": {"schema": ref}},
                    }
                if kind == "openai":
                    answers.pop("422", None)  # OpenAI reports refused values as 400
                if answers.get("422", {}).get("content", {}).get("application/json", {}).get("schema", {}).get(
                    "$ref"
                ) == "#/components/schemas/HTTPValidationError":
                    answers["422"]["content"]["application/json"]["schema"] = ref
        components.pop("HTTPValidationError", None)
        components.pop("ValidationError", None)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


# (schema component, property) -> the setting that bounds it on this server. The wire schemas carry the
# widest bound any server accepts; the served description says this server's own, so a client (or
# schemathesis) generated from it never sends a value the server then refuses. One bound no schema
# can state: A1111's ``batch_size x n_iter`` must be at most ``--max-images`` as well.
SERVER_LIMITS = {
    ("JobRequest", "steps"): "max_steps",
    ("JobRequest", "n"): "max_images",
    ("ImagesRequest", "steps"): "max_steps",
    ("ImagesRequest", "n"): "max_images",
    ("Txt2ImgRequest", "steps"): "max_steps",
    ("Txt2ImgRequest", "batch_size"): "max_images",
    ("Txt2ImgRequest", "n_iter"): "max_images",
    ("Img2ImgRequest", "steps"): "max_steps",
    ("Img2ImgRequest", "batch_size"): "max_images",
    ("Img2ImgRequest", "n_iter"): "max_images",
}


def document_limits(app: FastAPI, settings: Settings) -> None:
    """Make ``app.openapi()`` state this server's ``--max-steps`` and ``--max-images`` as maxima."""
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        components = schema.get("components", {}).get("schemas", {})
        for (component, name), setting in SERVER_LIMITS.items():
            prop = components.get(component, {}).get("properties", {}).get(name)
            if prop is None:
                continue
            limit = getattr(settings, setting)
            for option in [prop, *prop.get("anyOf", ())]:
                if option.get("type") == "integer":
                    option["maximum"] = min(option.get("maximum", limit), limit)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


SECURITY_SCHEMES = {
    "bearer": {"type": "http", "scheme": "bearer", "description": "An API key: `Authorization: Bearer <key>`"},
    "basic": {"type": "http", "scheme": "basic",
              "description": "`/sdapi/*` only: any user name, the API key as password"},
    "signedUrl": {"type": "apiKey", "in": "query", "name": "token",
                  "description": "A job's signed stream or image URL (`sse_url`, `image_url`): EventSource, <img>"},
}


def document_auth(app: FastAPI, settings: Settings) -> None:
    """With API keys on, make ``app.openapi()`` say so: the security schemes, which of them each
    operation takes, and its ``401`` in the path's error dialect. Public paths (``/health``,
    ``/ready``, the page, the docs, ``/metrics`` with ``--metrics-public``) name none. Without keys
    the description is unchanged: no operation can answer 401."""
    if not settings.has_auth():
        return
    generate: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        schema.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
        for path, operations in schema.get("paths", {}).items():
            public = path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES)
            if public or (path == "/metrics" and settings.metrics_public):
                continue
            body = {"$ref": f"#/components/schemas/{ERROR_SCHEMAS[dialect(path)]}"}
            security: list[dict[str, list[str]]] = [{"bearer": []}]
            if path.startswith("/sdapi/"):
                security.append({"basic": []})
            for method, operation in operations.items():
                if method == "get" and SIGNED_PATH.fullmatch(path.replace("{job_id}", "id")):
                    operation["security"] = [*security, {"signedUrl": []}]
                else:
                    operation["security"] = security
                operation.setdefault("responses", {})["401"] = {
                    "description": "No API key, a key that is not valid, or an expired or revoked signed URL",
                    "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
                    "content": {"application/json": {"schema": body}},
                }
        return schema

    app.openapi = openapi  # type: ignore[method-assign]

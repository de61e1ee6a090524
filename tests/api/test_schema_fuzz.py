"""Schemathesis against the app's own OpenAPI schema (in process, FakeEngine): every operation, fixed
seed, few examples. No answer may be a 5xx, and every answer must be one the schema documents, with
the documented content type and body shape."""

from __future__ import annotations

import pytest

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.types import Receive, Scope, Send  # noqa: E402

from sdworker.api.app import create_app  # noqa: E402
from sdworker.engine.fake import FakeEngine  # noqa: E402
from sdworker.settings import Settings  # noqa: E402

# Small limits keep every generated job short (the fake engine does not sleep); schemathesis talks to
# the app as "testserver", which the edge guard must serve.
SETTINGS = Settings(
    allowed_hosts=("testserver",), max_steps=4, max_pixels=64 * 64, max_images=2, max_queue=8,
    preview_min_interval_ms=0, shutdown_grace_seconds=1.0,
)


class FreshAppPerLifespan:
    """Schemathesis ends the app's lifespan after each test item and starts it again for the next;
    a Worker runs one lifespan only, so each lifespan gets a new app."""

    def __init__(self) -> None:
        self.app = create_app(SETTINGS, FakeEngine())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.app = create_app(SETTINGS, FakeEngine())
        await self.app(scope, receive, send)


schema = schemathesis.openapi.from_asgi("/openapi.json", FreshAppPerLifespan())


@schema.parametrize()
@hypothesis.settings(
    max_examples=25,
    derandomize=True,  # a fixed seed: the same cases on every run
    deadline=None,
    suppress_health_check=list(hypothesis.HealthCheck),
)
def test_every_operation_answers_as_documented(case: schemathesis.Case) -> None:
    case.call_and_validate(
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )

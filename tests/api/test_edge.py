"""The HTTP edge over HTTP (the real app, in process): Host, Origin, CORS, content types, HEAD, 405
Allow, malformed bodies, the page route, offline /docs, the documented errors, one log line per 500."""

from __future__ import annotations

import gzip
import logging
from typing import Any

import httpx
import pytest

from sdworker.api.errors import dialect
from sdworker.api.guard import host_patterns
from sdworker.api.responses import ROUTE_ERRORS
from sdworker.settings import Settings

from .helpers import SMALL, running_app

APP_ORIGIN = "https://app.example"
JSON = {"content-type": "application/json"}


def error_code(response: httpx.Response) -> str:
    assert response.headers["content-type"].startswith("application/json"), response.text
    return str(response.json()["error"]["code"])


async def test_a_foreign_host_is_refused() -> None:
    async with running_app() as app:
        for path in ("/v1/jobs/", "/health", "/v1/jobs"):
            refused = await app.client.get(path, headers={"Host": "evil.example"})
            assert refused.status_code == 400 and error_code(refused) == "host_not_allowed", path
        refused = await app.client.get("/health", headers={"Host": "evil.example:7833"})
        assert refused.status_code == 400
        for host in ("localhost:7833", "127.0.0.1", "[::1]:7833", "LOCALHOST"):
            assert (await app.client.get("/health", headers={"Host": host})).status_code == 200, host
        # The trailing-slash redirect now only ever points at a served host.
        redirect = await app.client.get("/v1/jobs/")
        assert redirect.status_code == 307 and redirect.headers["location"] == "http://127.0.0.1:7833/v1/jobs"


async def test_allowed_hosts_can_be_listed_or_opened() -> None:
    async with running_app(allowed_hosts=("sd.example", "*.lan.example"), wait_ready=False) as app:
        for host, status in (("sd.example", 200), ("gpu.lan.example:7833", 200), ("127.0.0.1", 400),
                             ("lan.example", 400), ("sd.example.evil", 400)):
            assert (await app.client.get("/health", headers={"Host": host})).status_code == status, host
    async with running_app(allowed_hosts=("*",)) as app:
        assert (await app.client.get("/health", headers={"Host": "anything.example"})).status_code == 200


def test_default_hosts_follow_the_bind_address() -> None:
    assert host_patterns(Settings()) == ("localhost", "127.0.0.1", "[::1]")
    assert host_patterns(Settings(host="10.0.0.5")) == ("localhost", "127.0.0.1", "[::1]", "10.0.0.5")
    assert host_patterns(Settings(host="::1")) == ("localhost", "127.0.0.1", "[::1]")
    assert host_patterns(Settings(host="0.0.0.0")) == ("*",)  # every interface: API keys guard it
    public = Settings(host="10.0.0.5", public_url="https://sd.example.com/")
    assert "sd.example.com" in host_patterns(public)


async def test_a_foreign_origin_cannot_even_send_a_bodyless_request() -> None:
    async with running_app() as app:
        job_id = await app.submit(steps=50)
        for method, path in (("DELETE", f"/v1/jobs/{job_id}"), ("GET", f"/v1/jobs/{job_id}"), ("POST", "/v1/jobs")):
            for origin in ("https://evil.example", "null", "http://127.0.0.1:9999"):
                refused = await app.client.request(method, path, headers={"Origin": origin})
                assert refused.status_code == 403 and error_code(refused) == "origin_not_allowed", (method, origin)
                assert "access-control-allow-origin" not in refused.headers
        assert (await app.status(job_id))["status"] != "cancelled"
        # The worker's own page (same scheme-less host and port as Host) may call it.
        same = await app.client.post("/v1/jobs", json={"prompt": "a", **SMALL},
                                     headers={"Origin": "http://127.0.0.1:7833"})
        assert same.status_code == 202 and "access-control-allow-origin" not in same.headers


async def test_cors_is_off_by_default_and_on_every_answer_to_a_listed_origin() -> None:
    async with running_app() as app:
        preflight = await app.client.options("/v1/jobs", headers={
            "Origin": APP_ORIGIN, "Access-Control-Request-Method": "POST"})
        assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
    async with running_app(cors_origins=(APP_ORIGIN,), max_body_bytes=4096) as app:
        cors = {"Origin": APP_ORIGIN}
        preflight = await app.client.options("/v1/jobs", headers={
            **cors, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == APP_ORIGIN
        assert "POST" in preflight.headers["access-control-allow-methods"]
        assert preflight.headers["access-control-allow-headers"] == "content-type"
        answers = {
            "202": await app.client.post("/v1/jobs", json={"prompt": "a", **SMALL}, headers=cors),
            "404": await app.client.get("/v1/jobs/nope", headers=cors),
            "413": await app.client.post("/v1/jobs", content=b"{" + b" " * 5000 + b"}", headers={**cors, **JSON}),
            "415": await app.client.post("/v1/jobs", content=b"{}", headers={**cors, "content-type": "text/plain"}),
            "422": await app.client.post("/v1/jobs", json={"prompt": "a", "steps": 0}, headers=cors),
            "405": await app.client.put("/v1/jobs", headers=cors),
        }
        for status, response in answers.items():
            assert str(response.status_code) == status, response.text
            assert response.headers["access-control-allow-origin"] == APP_ORIGIN, status
            assert "Retry-After" in response.headers["access-control-expose-headers"]
            assert response.headers["vary"] == "Origin"
        other = await app.client.get("/health", headers={"Origin": "https://other.example"})
        assert other.status_code == 403
    async with running_app(cors_origins=("*",)) as app:
        anyone = await app.client.get("/health", headers={"Origin": "null"})
        assert anyone.status_code == 200 and anyone.headers["access-control-allow-origin"] == "*"


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({"content-type": "text/plain"}, b'{"prompt": "a"}', 415, "unsupported_media_type"),
        ({"content-type": "application/x-www-form-urlencoded"}, b"prompt=a", 415, "unsupported_media_type"),
        ({}, b'{"prompt": "a"}', 415, "unsupported_media_type"),  # httpx sends no content-type for raw bytes
        ({**JSON, "content-encoding": "gzip"}, gzip.compress(b'{"prompt": "a"}'), 400, "invalid_json"),
        (JSON, b'{"prompt": "caf\xe9"}', 400, "invalid_json"),  # Latin-1, not UTF-8
        (JSON, b'{"prompt": "\x80"}', 400, "invalid_json"),
        ({"content-type": "multipart/form-data; boundary=x"}, b"--x--\r\n", 422, "invalid_request"),
    ],
)
async def test_bodies_must_be_plain_json(headers: dict[str, str], body: bytes, status: int, code: str) -> None:
    async with running_app() as app:
        response = await app.client.post("/v1/jobs", content=body, headers=headers)
        assert (response.status_code, error_code(response)) == (status, code), response.text
        assert not (await app.client.get("/v1/jobs")).json()["jobs"]


async def test_bodyless_posts_and_deletes_need_no_content_type() -> None:
    async with running_app() as app:
        job_id = await app.submit(steps=50)
        cancelled = await app.client.delete(f"/v1/jobs/{job_id}")
        assert cancelled.status_code in (200, 202)  # 202: cancelling, not yet taken effect


async def test_head_works_where_get_does() -> None:
    async with running_app() as app:
        job_id = await app.submit()
        await app.wait_status(job_id, "completed")
        for path in ("/health", "/v1/info", f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/image", "/", "/docs"):
            head = await app.client.head(path)
            get = await app.client.get(path)
            assert head.status_code == 200 and head.content == b"", path
            assert head.headers["content-type"] == get.headers["content-type"], path
        assert (await app.client.head("/v1/jobs/nope")).status_code == 404
        stream = await app.client.head(f"/v1/jobs/{job_id}/stream")
        assert stream.status_code == 200 and stream.content == b""


async def test_405_names_every_method_of_the_path() -> None:
    async with running_app() as app:
        for method, path, allowed in (
            ("OPTIONS", "/v1/jobs", "GET, HEAD, POST"),
            ("PUT", "/v1/jobs/abc", "DELETE, GET, HEAD"),
            ("POST", "/health", "GET, HEAD"),
        ):
            response = await app.client.request(method, path)
            assert response.status_code == 405 and error_code(response) == "method_not_allowed"
            assert response.headers["allow"] == allowed, (method, path)


async def test_page_names_are_looked_up_not_opened() -> None:
    async with running_app() as app:
        page = await app.client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert (await app.client.get("/page/index.html")).content == page.content
        for name in ("a" * 256, "no-such-file.js", "..%2Fapp.py", ".hidden", "%00", "app.js%00.png"):
            response = await app.client.get(f"/page/{name}")
            assert response.status_code == 404 and error_code(response) == "not_found", name


async def test_docs_work_offline() -> None:
    async with running_app() as app:
        html = (await app.client.get("/docs")).text
        assert "http" not in html.split("<body>")[0].replace("http-equiv", "")  # no CDN in the head
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
            assert f"/docs/assets/{asset}" in html
            response = await app.client.get(f"/docs/assets/{asset}")
            assert response.status_code == 200 and len(response.content) > 500, asset
        assert (await app.client.get("/docs/assets/index.html")).status_code == 404
        assert (await app.client.get("/redoc")).status_code == 404


async def test_openapi_lists_the_errors_routes_really_return() -> None:
    async with running_app() as app:
        schema = (await app.client.get("/openapi.json")).json()
    operations = {(method, path): op for path, ops in schema["paths"].items() for method, op in ops.items()}
    assert set(ROUTE_ERRORS) <= set(operations), "the table names a route the app no longer has"
    submit = operations[("post", "/v1/jobs")]["responses"]
    assert {"400", "403", "413", "415", "422", "429", "503"} <= set(submit)
    assert {"404", "409"} <= set(operations[("get", "/v1/jobs/{job_id}/image")]["responses"])
    ready = operations[("get", "/ready")]["responses"]["503"]["content"]["application/json"]["schema"]
    assert ready == {"$ref": "#/components/schemas/Readiness"}
    # Each dialect documents its own error body: ours, OpenAI's (/v1/images, /v1/models), A1111's (/sdapi).
    bodies = {"native": "ErrorBody", "openai": "OpenAIErrorBody", "a1111": "A1111ErrorBody"}
    for key, operation in operations.items():
        for status, answer in operation["responses"].items():
            if status.startswith(("4", "5")) and key != ("get", "/ready"):
                expected = {"$ref": f"#/components/schemas/{bodies[dialect(key[1])]}"}
                assert answer["content"]["application/json"]["schema"] == expected, (key, status)
    assert "HTTPValidationError" not in schema["components"]["schemas"]


async def test_every_500_is_logged_once_bounded_without_the_query(caplog: pytest.LogCaptureFixture) -> None:
    async with running_app() as app:

        async def boom() -> dict[str, Any]:
            raise RuntimeError("x" * 100_000)

        app.app.add_api_route("/boom", boom)
        # raise_app_exceptions=True: had the error escaped the app, uvicorn would log it again.
        transport = httpx.ASGITransport(app=app.app, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:7833") as client:
            with caplog.at_level(logging.INFO):
                response = await client.get("/boom?token=secret-in-query", headers={"Origin": "http://127.0.0.1:7833"})
    assert response.status_code == 500 and error_code(response) == "internal_error"
    records = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(records) == 1, [r.getMessage()[:100] for r in records]
    text = records[0].getMessage()
    assert text.startswith("unhandled error on GET /boom\n") and "secret-in-query" not in text
    assert "RuntimeError" in text and text.count("Traceback") == 1 and len(text) < 10_000
    assert records[0].exc_info is None  # the bounded text is the traceback; no second, unbounded copy

"""API keys over HTTP: 401 in each dialect, owners, signed URLs, admin routes (both backends)."""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import Any

import pytest

from sdworker.api.auth import owner_name
from sdworker.api.signing import UrlSigner, key_id
from sdworker.engine.fake import FakeEngine

from .helpers import SMALL, parse_sse, running_app

ALICE = "alice-key-0123456789"
BOB = "bob-key-0123456789ab"
ADMIN = "admin-key-0123456789"
SECRET = "signing-secret-0123456789"
FILE_KEY = "file-key-0123456789abcd"
OTHER_FILE_KEY = "other-file-key-0123456789"
AUTH = {"api_keys": (ALICE, BOB), "admin_api_keys": (ADMIN,), "signing_secret": SECRET}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_every_route_but_health_ready_and_page_needs_a_key() -> None:
    async with running_app(**AUTH) as app:
        c = app.client
        for path in ("/health", "/ready", "/", "/page/app.js", "/docs"):
            assert (await c.get(path)).status_code == 200, path
        for path in ("/v1/jobs", "/v1/info", "/metrics", "/v1/workers"):
            answer = await c.get(path)
            assert answer.status_code == 401, path
            assert answer.headers["WWW-Authenticate"].startswith("Bearer")
            assert answer.json()["code"] == "unauthorized"
            assert ALICE not in answer.text
        assert (await c.get("/v1/info", headers=bearer("wrong-key-0123456789"))).status_code == 401
        assert (await c.get("/v1/info", headers=bearer(ALICE))).status_code == 200
        # OpenAI and A1111 dialects
        openai = await c.get("/v1/models")
        assert openai.status_code == 401 and openai.json()["error"]["type"] == "authentication_error"
        a1111 = await c.get("/sdapi/v1/sd-models")
        assert a1111.status_code == 401 and a1111.json()["error"] == "unauthorized"
        assert "Basic" in a1111.headers["WWW-Authenticate"]
        basic = base64.b64encode(f"user:{ALICE}".encode()).decode()
        assert (await c.get("/sdapi/v1/sd-models", headers={"Authorization": f"Basic {basic}"})).status_code == 200
        # Basic is for A1111 clients only
        assert (await c.get("/v1/info", headers={"Authorization": f"Basic {basic}"})).status_code == 401


async def post_counting_reads(app: Any, path: str, body: bytes) -> tuple[int, int]:
    """POST ``body`` to the ASGI app in 1,000-byte chunks: (status answered, chunks the app took)."""
    chunks = [body[i:i + 1000] for i in range(0, len(body), 1000)]
    taken = 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal taken
        taken += 1
        if taken > len(chunks):
            return {"type": "http.disconnect"}
        return {"type": "http.request", "body": chunks[taken - 1], "more_body": taken < len(chunks)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1:7833"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 7833), "state": {},
    }
    await app(scope, receive, send)
    return int(sent[0]["status"]), taken


@pytest.mark.parametrize("path", ["/v1/jobs", "/v1/images/generations", "/sdapi/v1/txt2img"])
async def test_a_request_without_a_key_is_refused_before_its_body_is_read(path: str) -> None:
    """Anyone who can reach the port must not make the server read and hold a body: 20 keyless 30 MB
    posts took a server from 104 to 761 MB (525 MB stayed) while the body limit read them before the
    key check. A UTF-16 body (the body reader's own 400) and one above --max-body-bytes (its 413) are
    401s too."""
    async with running_app(**AUTH, max_body_bytes=4096) as app:
        for body in (b'{"prompt": "a"}', '{"prompt": "a"}'.encode("utf-16"), b'{"prompt": "' + b"a" * 8000 + b'"}'):
            status, taken = await post_counting_reads(app.app, path, body)
            assert status == 401 and taken == 0, (path, status, f"{taken} body chunks read before the key check")


async def test_metrics_public_and_auth_off() -> None:
    async with running_app(**AUTH, metrics_public=True) as app:
        assert (await app.client.get("/metrics")).status_code == 200
    async with running_app() as app:  # auth off: an empty Basic header (A1111 clients) is fine
        assert (await app.client.get("/sdapi/v1/sd-models", headers={"Authorization": "Basic "})).status_code == 200


async def test_a_job_belongs_to_its_key() -> None:
    async with running_app(**AUTH) as app:
        c = app.client
        answer = await c.post("/v1/jobs", json={"prompt": "a cat", **SMALL}, headers=bearer(ALICE))
        assert answer.status_code == 202
        job_id = answer.json()["job_id"]
        done = await _wait_done(app, job_id, ALICE)
        # Alice's stream opens the job's channel on this node (Redis: the owner is then remembered
        # there, not read again): another key's watcher is still refused.
        assert (await c.get(f"/v1/jobs/{job_id}/stream", headers=bearer(ALICE))).status_code == 200
        for method, path in (("GET", ""), ("GET", "/image"), ("GET", "/stream"), ("DELETE", "")):
            assert (await c.request(method, f"/v1/jobs/{job_id}{path}", headers=bearer(BOB))).status_code == 404
        assert (await c.get("/v1/jobs", headers=bearer(BOB))).json()["jobs"] == []
        assert [j["job_id"] for j in (await c.get("/v1/jobs", headers=bearer(ALICE))).json()["jobs"]] == [job_id]
        assert [j["job_id"] for j in (await c.get("/v1/jobs", headers=bearer(ADMIN))).json()["jobs"]] == [job_id]
        assert (await c.get(f"/v1/jobs/{job_id}", headers=bearer(ADMIN))).status_code == 200
        assert done["status"] == "completed"
        # the owner is a name derived from the key, never the key
        assert owner_name(ALICE) != ALICE and ALICE not in str(done)
        # admin only
        assert (await c.get("/v1/dead", headers=bearer(ALICE))).status_code == 403
        assert (await c.get("/v1/dead", headers=bearer(ADMIN))).status_code == 200


async def test_signed_urls_open_one_job_until_they_expire() -> None:
    async with running_app(**AUTH) as app:
        c = app.client
        submitted = (await c.post("/v1/jobs", json={"prompt": "a cat", **SMALL}, headers=bearer(ALICE))).json()
        sse_url = submitted["sse_url"]
        assert "token=" in sse_url
        stream = await c.get(sse_url)  # no header: the token is the key
        assert stream.status_code == 200
        assert parse_sse(stream.text)[-2][1] == "complete"
        done = await _wait_done(app, submitted["job_id"], ALICE)
        assert "token=" in done["image_url"]
        assert (await c.get(done["image_url"])).headers["content-type"] == "image/png"
        # the token is for that job only, and only for stream/image
        other = (await c.post("/v1/jobs", json={"prompt": "a dog", **SMALL}, headers=bearer(BOB))).json()
        token = sse_url.split("token=")[1]
        # (a token for another job is refused as a 403: the URL is known, and not this one's)
        refused = await c.get(f"/v1/jobs/{other['job_id']}/stream?token={token}")
        assert (refused.status_code, refused.json()["error"]["code"]) == (403, "forbidden")
        assert (await c.get(f"/v1/jobs/{submitted['job_id']}?token={token}")).status_code == 401  # not a signed path
        # an expired token (same secret) is refused: 403, a JSON error that names the token
        expired = UrlSigner(SECRET).token(submitted["job_id"], time.time() - 1, key_id(ALICE))
        refused = await c.get(f"/v1/jobs/{submitted['job_id']}/stream?token={expired}")
        assert refused.status_code == 403 and "has expired" in refused.json()["error"]["message"]
        # ...and a token outlives no result: a job dropped is 404 even with a valid token
        live = UrlSigner(SECRET).token("0" * 32, time.time() + 60, key_id(ALICE))
        assert (await c.get(f"/v1/jobs/{'0' * 32}/stream?token={live}")).status_code == 404


async def test_openai_image_urls_are_signed() -> None:
    async with running_app(**AUTH) as app:
        body = {"prompt": "a cat", "size": "64x64", "response_format": "url"}
        answer = await app.client.post("/v1/images/generations", json=body, headers=bearer(ALICE))
        assert answer.status_code == 200, answer.text
        url = answer.json()["data"][0]["url"]
        assert "token=" in url
        assert (await app.client.get(url)).headers["content-type"] == "image/png"  # no key needed


async def test_cancel_not_yet_taken_effect_answers_202() -> None:
    # Steps of a second: the cancel cannot take effect (the next step) before DELETE answers.
    async with running_app(FakeEngine(step_seconds=1.0), **AUTH) as app:
        c = app.client
        job_id = (await c.post("/v1/jobs", json={"prompt": "a", **SMALL, "steps": 20}, headers=bearer(ALICE))).json()[
            "job_id"
        ]
        await app.wait_for(lambda: _running(app, job_id))
        answer = await c.delete(f"/v1/jobs/{job_id}", headers=bearer(ALICE))
        assert (answer.status_code, answer.json()["status"]) == (202, "cancelling")


async def _running(app, job_id: str) -> bool:  # type: ignore[no-untyped-def]
    answer = await app.client.get(f"/v1/jobs/{job_id}", headers=bearer(ALICE))
    return bool(answer.json()["status"] == "running")


async def _wait_done(app, job_id: str, key: str) -> dict:  # type: ignore[no-untyped-def,type-arg]
    async def done() -> bool:
        answer = await app.client.get(f"/v1/jobs/{job_id}", headers=bearer(key))
        return bool(answer.json()["status"] in ("completed", "failed", "cancelled"))

    await app.wait_for(done)
    return dict((await app.client.get(f"/v1/jobs/{job_id}", headers=bearer(key))).json())


async def test_revoking_a_key_revokes_the_signed_urls_it_was_given(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{FILE_KEY}\n{OTHER_FILE_KEY}\n")
    async with running_app(api_keys_file=keys_file, signing_secret=SECRET) as app:
        c = app.client
        submitted = (await c.post("/v1/jobs", json={"prompt": "a cat", **SMALL}, headers=bearer(FILE_KEY))).json()
        done = await _wait_done(app, submitted["job_id"], FILE_KEY)
        assert (await c.get(done["image_url"])).status_code == 200
        keys_file.write_text(f"{OTHER_FILE_KEY}\n")  # FILE_KEY revoked
        app.app.state.keys.reload()  # what SIGHUP runs
        assert (await c.get(done["image_url"])).status_code == 403
        assert (await c.get(submitted["sse_url"])).status_code == 403


async def test_a_reload_holds_the_keys_file_to_the_start_up_rule(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    keys_file = tmp_path / "keys"
    keys_file.write_text(f"{FILE_KEY}\n")
    async with running_app(api_keys_file=keys_file) as app:
        for bad in ("abc\n", f"{FILE_KEY}\nabc\n", "", "has a space in it 0123456789\n"):
            keys_file.write_text(bad)
            app.app.state.keys.reload()
            for key in ("abc", "has a space in it 0123456789"):
                assert (await app.client.get("/v1/info", headers=bearer(key))).status_code == 401
            assert (await app.client.get("/v1/info", headers=bearer(FILE_KEY))).status_code == 200  # kept
        assert "API keys not reloaded, keeping the 1 keys we had" in caplog.text
        assert "line 2: each API key must be at least 16" in caplog.text
        assert "has a space in it" not in caplog.text  # the log names lines, never keys

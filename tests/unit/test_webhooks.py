"""Webhook signing, targets and one delivery, against an independent verifier (the ``standardwebhooks``
package) and a real HTTP receiver on loopback."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from sdworker.errors import InvalidRequest
from sdworker.webhooks.delivery import MAX_ANSWER_BYTES, backoff_seconds, deliver
from sdworker.webhooks.signing import owner_secret, signed_headers
from sdworker.webhooks.targets import check_target

SERVER_SECRET = "a-server-secret-of-some-length"
BODY = json.dumps({"type": "job.completed", "data": {"job_id": "abc", "status": "completed"}}).encode()


def test_each_owner_has_its_own_secret_and_the_independent_verifier_accepts_only_it() -> None:
    alice, bob = owner_secret(SERVER_SECRET, "alice"), owner_secret(SERVER_SECRET, "bob")
    assert alice.startswith("whsec_") and alice != bob
    assert owner_secret(SERVER_SECRET, "alice") == alice  # every node of a fleet derives the same
    assert owner_secret("another-server-secret!!", "alice") != alice
    headers = signed_headers([alice], "msg_1", int(time.time()), BODY)
    assert Webhook(alice).verify(BODY, headers) == json.loads(BODY)
    with pytest.raises(WebhookVerificationError):
        Webhook(bob).verify(BODY, headers)  # bob cannot check (or forge) alice's webhooks
    with pytest.raises(WebhookVerificationError):
        Webhook(alice).verify(BODY.replace(b"completed", b"failed"), headers)


def test_rotation_signs_with_every_secret_so_old_and_new_receivers_verify() -> None:
    new, old = owner_secret("the-new-server-secret", "alice"), owner_secret(SERVER_SECRET, "alice")
    headers = signed_headers([new, old], "msg_2", int(time.time()), BODY)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(new).verify(BODY, headers)
    Webhook(old).verify(BODY, headers)


def test_a_stale_timestamp_is_refused_by_receivers() -> None:
    secret = owner_secret(SERVER_SECRET, None)
    headers = signed_headers([secret], "msg_3", int(time.time()) - 3600, BODY)
    with pytest.raises(WebhookVerificationError, match="too old"):
        Webhook(secret).verify(BODY, headers)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:9/hook", "http://localhost/hook", "http://10.0.0.7/", "http://169.254.169.254/latest",
     "http://[::1]:80/", "http://192.168.1.1/", "http://0.0.0.0/"],
)
def test_private_loopback_and_link_local_targets_are_refused(url: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        check_target(url, allow_private=False)
    assert raised.value.field == "webhook.url" and "not a public address" in raised.value.message


@pytest.mark.parametrize("url", ["ftp://example.com/x", "http:///nohost", "http://user:pw@8.8.8.8/", "http://8.8.8.8:99999/"])
def test_malformed_targets_are_refused_naming_the_field(url: str) -> None:
    with pytest.raises(InvalidRequest) as raised:
        check_target(url, allow_private=False)
    assert raised.value.field == "webhook.url"


def test_a_public_address_is_accepted_and_private_ones_only_when_allowed() -> None:
    target = check_target("https://8.8.8.8/hooks?x=1", allow_private=False)
    assert (target.address, target.port, target.path, target.scheme) == ("8.8.8.8", 443, "/hooks?x=1", "https")
    assert check_target("http://localhost:8123/h", allow_private=True).address in ("127.0.0.1", "::1")


class _Receiver(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, Any]]
    answer: int = 200
    redirect_to: str | None = None
    huge: bool = False

    def do_POST(self) -> None:
        length = int(self.headers["content-length"])
        headers = {key.lower(): value for key, value in self.headers.items()}
        self.seen.append({"headers": headers, "body": self.rfile.read(length), "path": self.path})
        self.send_response(self.answer)
        if self.redirect_to:
            self.send_header("location", self.redirect_to)
        if self.huge:
            self.send_header("content-length", str(100 * MAX_ANSWER_BYTES))
            self.end_headers()
            try:
                for _ in range(100):
                    self.wfile.write(b"x" * MAX_ANSWER_BYTES)
            except OSError:
                pass  # the sender stopped reading and closed: what the test wants
            return
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[type[_Receiver], int]]:
    handler = type("Receiver", (_Receiver,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield handler, server.server_address[1]
    server.shutdown()
    server.server_close()


async def test_a_delivery_goes_to_the_checked_address_with_the_host_name_and_verifies(
    receiver: tuple[type[_Receiver], int],
) -> None:
    handler, port = receiver
    secret = owner_secret(SERVER_SECRET, "alice")
    target = check_target(f"http://localhost:{port}/hook?job=1", allow_private=True)
    async with httpx.AsyncClient() as client:
        attempt = await deliver(client, target, [secret], "msg_9", BODY)
    assert attempt.delivered and attempt.status == 200 and attempt.error is None
    [seen] = handler.seen
    assert seen["path"] == "/hook?job=1" and seen["headers"]["host"] == f"localhost:{port}"
    assert Webhook(secret).verify(seen["body"], seen["headers"]) == json.loads(BODY)
    assert seen["headers"]["webhook-id"] == "msg_9"


async def test_redirects_are_not_followed_and_non_2xx_is_a_failure(receiver: tuple[type[_Receiver], int]) -> None:
    handler, port = receiver
    handler.answer, handler.redirect_to = 302, f"http://127.0.0.1:{port}/elsewhere"
    target = check_target(f"http://127.0.0.1:{port}/hook", allow_private=True)
    async with httpx.AsyncClient() as client:
        attempt = await deliver(client, target, [owner_secret(SERVER_SECRET, None)], "m", BODY)
        assert not attempt.delivered and attempt.status == 302 and "redirect" in (attempt.error or "")
        handler.answer, handler.redirect_to = 500, None
        again = await deliver(client, target, [owner_secret(SERVER_SECRET, None)], "m", BODY)
    assert not again.delivered and again.status == 500
    assert [seen["path"] for seen in handler.seen] == ["/hook", "/hook"]  # nothing went to /elsewhere
    first, second = (seen["headers"] for seen in handler.seen)
    assert first["webhook-id"] == second["webhook-id"] == "m"


async def test_an_endless_answer_is_not_read_past_the_limit(receiver: tuple[type[_Receiver], int]) -> None:
    handler, port = receiver
    handler.huge = True
    target = check_target(f"http://127.0.0.1:{port}/", allow_private=True)
    async with httpx.AsyncClient() as client:
        attempt = await deliver(client, target, [owner_secret(SERVER_SECRET, None)], "m", BODY)
    assert attempt.delivered  # the 2xx counts; the rest of the answer was never read


async def test_no_answer_is_an_attempt_with_an_error_not_an_exception() -> None:
    target = check_target("http://127.0.0.1:9/", allow_private=True)  # the discard port: nobody listens
    async with httpx.AsyncClient() as client:
        attempt = await deliver(client, target, [owner_secret(SERVER_SECRET, None)], "m", BODY)
    assert attempt.status is None and attempt.error and not attempt.delivered


def test_backoff_doubles_up_to_a_cap() -> None:
    assert [backoff_seconds(n) for n in (1, 2, 3)] == [2.0, 4.0, 8.0]
    assert backoff_seconds(30) == 600.0
